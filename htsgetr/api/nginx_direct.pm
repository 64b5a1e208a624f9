# htsgetr, `[data_server] accel = "nginx-direct"` with `htsgetr config nginx --verifier perl`:
# the check of nginx_direct.js in nginx's embedded Perl, which costs nginx less per request
# than njs does (bench/http_load.py `bench_accel`). Same rules: nginx sends a /data url's
# range itself only when its signature (the HMAC-SHA256 of htsgetr/auth/signing.py: method,
# path below /data/, Range, expiry) holds for the plain case; anything else ('0') goes to
# htsgetr, which answers it as without nginx: unsigned, tampered or expired urls, other
# methods, browsers (Origin), `If-Range`, a Range that is not one `bytes=first-last` (nginx
# joins a repeated one with commas), a name htsgetr would not serve.
#
# Written by `htsgetr config nginx` with the verifying secrets (hex) in place of @KEYS@:
# keep this file readable by nginx only. Needs nginx's Perl module and Digest::SHA (in Perl).

package HtsgetrDirect;

use strict;
use warnings;
use Digest::SHA ();
use Time::HiRes ();

my @KEYS = map { pack('H*', $_) } (@KEYS@);
my $NAMES = qr{@NAMES@};  # no hidden segment; the name of a data file or index htsgetr serves
my $RANGE = qr{\Abytes=[0-9]{1,18}-[0-9]{0,18}\z};
my $EXP = qr{\A[0-9]{1,12}\z};

sub same {  # in constant time for strings of one length: XOR them, count what is not NUL
    my ($a, $b) = @_;
    return 0 if length($a) != length($b);
    return (($a ^ $b) =~ tr/\0//c) == 0;
}

sub verify {
    my $r = shift;
    my $method = $r->request_method;
    return '0' if $method ne 'GET' && $method ne 'HEAD';
    return '0' if defined $r->header_in('If-Range') || defined $r->header_in('Origin');
    my $exp = $r->variable('arg_exp');
    my $sig = $r->variable('arg_sig');
    return '0' if !defined $exp || !defined $sig || $exp !~ $EXP;
    return '0' if $exp < Time::HiRes::time();
    my $range = $r->header_in('Range');
    $range = '' if !defined $range;
    return '0' if $range ne '' && $range !~ $RANGE;
    my $uri = $r->uri;
    return '0' if substr($uri, 0, 6) ne '/data/';
    my $path = substr($uri, 6);
    return '0' if $path !~ $NAMES;
    my $message = "GET\n$path\n$range\n$exp";
    my $valid = 0;
    for my $key (@KEYS) {  # no early exit: the time does not tell which key
        my $mac = Digest::SHA::hmac_sha256_base64($message, $key);
        $mac =~ tr{+/}{-_};
        $valid = same($mac, $sig) || $valid;
    }
    return $valid ? '1' : '0';
}

1;
