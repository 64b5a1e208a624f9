// htsgetr, `[data_server] accel = "nginx-direct"`: nginx checks a /data url's signature itself
// (the HMAC-SHA256 of htsgetr/auth/signing.py: method, path below /data/, Range, expiry) and,
// when it holds, sends the local file's range without asking htsgetr. It vouches only for
// the plain case; anything else ('0') goes to htsgetr, which answers it as without nginx:
// unsigned, tampered or expired urls, other methods, browsers (Origin: htsgetr answers CORS),
// `If-Range` (nginx would drop the Range and send the whole file), a Range header that is
// repeated or not one `bytes=first-last`, a name htsgetr would not serve (hidden, or not a
// data file or index of a served format).
//
// Written by `htsgetr config nginx` with the verifying secrets in place of @KEYS@: keep this
// file readable by nginx only. ES5 with `export default`: njs 0.7 (Debian 12) and later.

var crypto = require('crypto');

var KEYS = @KEYS@;
var NAMES = @NAMES@;  // no hidden segment; the name of a data file or index htsgetr serves
var PREFIX = '/data/';
var RANGE = /^bytes=[0-9]{1,18}-[0-9]{0,18}$/;
var EXP = /^[0-9]{1,12}$/;

function rangeHeaders(r) {
    var out = [];
    var raw = r.rawHeadersIn;
    for (var i = 0; i < raw.length; i++) {
        var name = raw[i][0].toLowerCase();
        if (name === 'if-range' || name === 'origin') {
            return null;
        }
        if (name === 'range') {
            out.push(raw[i][1]);
        }
    }
    return out;
}

function same(a, b) {  // in constant time for strings of one length
    if (a.length !== b.length) {
        return false;
    }
    var diff = 0;
    for (var i = 0; i < a.length; i++) {
        diff |= a.charCodeAt(i) ^ b.charCodeAt(i);
    }
    return diff === 0;
}

function verify(r) {
    if (r.method !== 'GET' && r.method !== 'HEAD') {
        return '0';
    }
    var v = r.variables;
    var exp = v.arg_exp;
    var sig = v.arg_sig;
    if (!exp || !sig || !EXP.test(exp) || Number(exp) < Date.now() / 1000) {
        return '0';
    }
    var ranges = rangeHeaders(r);
    if (ranges === null || ranges.length > 1 || (ranges.length === 1 && !RANGE.test(ranges[0]))) {
        return '0';
    }
    var uri = r.uri;
    if (uri.slice(0, PREFIX.length) !== PREFIX) {
        return '0';
    }
    var path = uri.slice(PREFIX.length);
    if (!NAMES.test(path)) {
        return '0';
    }
    var message = 'GET\n' + path + '\n' + (ranges[0] || '') + '\n' + exp;
    var valid = false;
    for (var i = 0; i < KEYS.length; i++) {  // no early exit: the time does not tell which key
        var mac = crypto.createHmac('sha256', KEYS[i]).update(message).digest('base64url');
        valid = same(mac, sig) || valid;
    }
    return valid ? '1' : '0';
}

export default {verify: verify};
