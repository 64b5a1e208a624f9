/*
 * htsgetr, `[data_server] accel = "nginx-direct"` with `htsgetr config nginx --verifier
 * module`: the check of nginx_direct.js / nginx_direct.pm compiled into nginx, so a signed
 * /data range costs nginx no script call (bench/http_load.py `bench_accel`).
 *
 * $htsgetr_direct is "1" when the request is the plain case htsgetr signed: GET or HEAD; no
 * Origin (browsers get htsgetr's CORS) and no If-Range (nginx would drop the Range); one
 * Range `bytes=first-last` or none; a path below /data/ matching `htsgetr_direct_names`; an
 * unexpired `exp` and a `sig` equal to the HMAC-SHA256 (auth/signing.py) of
 * "GET\n<path>\n<Range>\n<exp>" under one of the secrets. Anything else is "0" and goes to
 * htsgetr, which answers it as without nginx.
 *
 *   htsgetr_direct_secrets /etc/htsgetr/htsgetr-direct.keys;   # hex, one per line, 0600
 *   htsgetr_direct_names "\A...\z";                            # PCRE
 *
 * Both in `http {}`; the secrets are read when nginx reads its configuration (start, HUP).
 * Built against the nginx that loads it (build.sh: `--with-compat --add-dynamic-module`).
 */

#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>


#define HTSGETR_MAC_LEN       32    /* SHA-256 */
#define HTSGETR_SIG_LEN       43    /* its base64url, unpadded */
#define HTSGETR_EXP_DIGITS    12
#define HTSGETR_RANGE_DIGITS  18
#define HTSGETR_KEYS_MAX      65536 /* bytes of the secrets file */


typedef struct {
    ngx_array_t  *macs;     /* EVP_MAC_CTX *: HMAC-SHA256 keyed with each secret */
    ngx_regex_t  *names;
} ngx_http_htsgetr_direct_conf_t;


static ngx_int_t ngx_http_htsgetr_direct_add_variable(ngx_conf_t *cf);
static void *ngx_http_htsgetr_direct_create_conf(ngx_conf_t *cf);
static char *ngx_http_htsgetr_direct_init_conf(ngx_conf_t *cf, void *conf);
static char *ngx_http_htsgetr_direct_secrets(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_htsgetr_direct_names(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);


static ngx_command_t  ngx_http_htsgetr_direct_commands[] = {

    { ngx_string("htsgetr_direct_secrets"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_htsgetr_direct_secrets,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("htsgetr_direct_names"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_htsgetr_direct_names,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_htsgetr_direct_module_ctx = {
    ngx_http_htsgetr_direct_add_variable,  /* preconfiguration */
    NULL,                                  /* postconfiguration */

    ngx_http_htsgetr_direct_create_conf,   /* create main configuration */
    ngx_http_htsgetr_direct_init_conf,     /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    NULL,                                  /* create location configuration */
    NULL                                   /* merge location configuration */
};


ngx_module_t  ngx_http_htsgetr_direct_module = {
    NGX_MODULE_V1,
    &ngx_http_htsgetr_direct_module_ctx,   /* module context */
    ngx_http_htsgetr_direct_commands,      /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    NULL,                                  /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    NULL,                                  /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


static ngx_str_t  ngx_http_htsgetr_direct_name = ngx_string("htsgetr_direct");
static ngx_str_t  ngx_http_htsgetr_direct_prefix = ngx_string("/data/");


static ngx_uint_t
ngx_http_htsgetr_direct_is(ngx_table_elt_t *h, const char *name, size_t len)
{
    return h->key.len == len && ngx_strncasecmp(h->key.data, (u_char *) name, len) == 0;
}


/* the one Range header's value ("" without one); NGX_DECLINED for a repeated Range, an
 * If-Range or an Origin, whatever nginx's version does with repeated headers */
static ngx_int_t
ngx_http_htsgetr_direct_range(ngx_http_request_t *r, ngx_str_t *range)
{
    ngx_uint_t        i, seen;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    ngx_str_null(range);
    seen = 0;
    part = &r->headers_in.headers.part;
    h = part->elts;

    for (i = 0; /* void */; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                break;
            }
            part = part->next;
            h = part->elts;
            i = 0;
            if (part->nelts == 0) {
                continue;
            }
        }

        if (ngx_http_htsgetr_direct_is(&h[i], "Origin", 6)
            || ngx_http_htsgetr_direct_is(&h[i], "If-Range", 8))
        {
            return NGX_DECLINED;
        }

        if (ngx_http_htsgetr_direct_is(&h[i], "Range", 5)) {
            if (seen++) {
                return NGX_DECLINED;
            }
            *range = h[i].value;
        }
    }

    return NGX_OK;
}


/* `bytes=` 1-18 digits `-` 0-18 digits, nothing else */
static ngx_uint_t
ngx_http_htsgetr_direct_range_ok(ngx_str_t *range)
{
    u_char  *p, *last;
    size_t   n;

    if (range->len < 8 || ngx_strncmp(range->data, "bytes=", 6) != 0) {
        return 0;
    }

    p = range->data + 6;
    last = range->data + range->len;

    for (n = 0; p < last && *p >= '0' && *p <= '9'; p++, n++) { /* void */ }
    if (n == 0 || n > HTSGETR_RANGE_DIGITS || p == last || *p++ != '-') {
        return 0;
    }

    for (n = 0; p < last && *p >= '0' && *p <= '9'; p++, n++) { /* void */ }

    return p == last && n <= HTSGETR_RANGE_DIGITS;
}


/* 1-12 digits, not before now (a url expires once the clock passes `exp`) */
static ngx_uint_t
ngx_http_htsgetr_direct_exp_ok(ngx_str_t *exp)
{
    size_t       i;
    uint64_t     value;
    ngx_time_t  *now;

    if (exp->len == 0 || exp->len > HTSGETR_EXP_DIGITS) {
        return 0;
    }

    value = 0;
    for (i = 0; i < exp->len; i++) {
        if (exp->data[i] < '0' || exp->data[i] > '9') {
            return 0;
        }
        value = value * 10 + (exp->data[i] - '0');
    }

    now = ngx_timeofday();

    return value > (uint64_t) now->sec
           || (value == (uint64_t) now->sec && now->msec == 0);
}


static ngx_uint_t
ngx_http_htsgetr_direct_vouch(ngx_http_request_t *r, ngx_http_htsgetr_direct_conf_t *hcf)
{
    u_char        *p, *message;
    size_t         len, mac_len;
    ngx_str_t      exp, sig, range, path, mac, mac64;
    ngx_uint_t     i, valid;
    EVP_MAC_CTX  **ctx;
    u_char         mac_buf[EVP_MAX_MD_SIZE];
    u_char         mac64_buf[HTSGETR_SIG_LEN + 4];

    if (hcf->macs == NULL || hcf->names == NULL) {
        return 0;
    }

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return 0;
    }

    if (ngx_http_arg(r, (u_char *) "exp", 3, &exp) != NGX_OK
        || ngx_http_arg(r, (u_char *) "sig", 3, &sig) != NGX_OK
        || sig.len != HTSGETR_SIG_LEN
        || !ngx_http_htsgetr_direct_exp_ok(&exp))
    {
        return 0;
    }

    if (ngx_http_htsgetr_direct_range(r, &range) != NGX_OK
        || (range.len && !ngx_http_htsgetr_direct_range_ok(&range)))
    {
        return 0;
    }

    len = ngx_http_htsgetr_direct_prefix.len;
    if (r->uri.len <= len
        || ngx_strncmp(r->uri.data, ngx_http_htsgetr_direct_prefix.data, len) != 0)
    {
        return 0;
    }

    path.data = r->uri.data + len;
    path.len = r->uri.len - len;

    if (ngx_regex_exec(hcf->names, &path, NULL, 0) < 0) {
        return 0;
    }

    /* "GET\n" path "\n" range "\n" exp */
    len = 4 + path.len + 1 + range.len + 1 + exp.len;
    message = ngx_pnalloc(r->pool, len);
    if (message == NULL) {
        return 0;
    }

    p = ngx_cpymem(message, "GET\n", 4);
    p = ngx_cpymem(p, path.data, path.len);
    *p++ = '\n';
    p = ngx_cpymem(p, range.data, range.len);
    *p++ = '\n';
    p = ngx_cpymem(p, exp.data, exp.len);

    valid = 0;
    ctx = hcf->macs->elts;

    for (i = 0; i < hcf->macs->nelts; i++) {  /* no early exit: the time tells no key */

        /* a NULL key starts again from the key's precomputed state */
        if (!EVP_MAC_init(ctx[i], NULL, 0, NULL)
            || !EVP_MAC_update(ctx[i], message, len)
            || !EVP_MAC_final(ctx[i], mac_buf, &mac_len, sizeof(mac_buf))
            || mac_len != HTSGETR_MAC_LEN)
        {
            return 0;
        }

        mac.data = mac_buf;
        mac.len = mac_len;
        mac64.data = mac64_buf;
        ngx_encode_base64url(&mac64, &mac);

        valid |= (mac64.len == HTSGETR_SIG_LEN
                  && CRYPTO_memcmp(mac64.data, sig.data, HTSGETR_SIG_LEN) == 0);
    }

    return valid;
}


static ngx_int_t
ngx_http_htsgetr_direct_variable(ngx_http_request_t *r, ngx_http_variable_value_t *v,
    uintptr_t data)
{
    ngx_http_htsgetr_direct_conf_t  *hcf;

    hcf = ngx_http_get_module_main_conf(r, ngx_http_htsgetr_direct_module);

    v->data = (u_char *) (ngx_http_htsgetr_direct_vouch(r, hcf) ? "1" : "0");
    v->len = 1;
    v->valid = 1;
    v->no_cacheable = 0;
    v->not_found = 0;

    return NGX_OK;
}


static ngx_int_t
ngx_http_htsgetr_direct_add_variable(ngx_conf_t *cf)
{
    ngx_http_variable_t  *var;

    var = ngx_http_add_variable(cf, &ngx_http_htsgetr_direct_name, 0);
    if (var == NULL) {
        return NGX_ERROR;
    }

    var->get_handler = ngx_http_htsgetr_direct_variable;

    return NGX_OK;
}


static void *
ngx_http_htsgetr_direct_create_conf(ngx_conf_t *cf)
{
    return ngx_pcalloc(cf->pool, sizeof(ngx_http_htsgetr_direct_conf_t));
}


/* both directives or neither: one alone would vouch for nothing, silently */
static char *
ngx_http_htsgetr_direct_init_conf(ngx_conf_t *cf, void *conf)
{
    ngx_http_htsgetr_direct_conf_t *hcf = conf;

    if ((hcf->macs == NULL) != (hcf->names == NULL)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "htsgetr_direct_secrets and "
                           "htsgetr_direct_names go together: one is missing");
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_htsgetr_direct_hex(u_char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    c |= 0x20;
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    return -1;
}


static void
ngx_http_htsgetr_direct_free_macs(void *data)
{
    ngx_array_t *macs = data;

    ngx_uint_t    i;
    EVP_MAC_CTX **ctx;

    ctx = macs->elts;
    for (i = 0; i < macs->nelts; i++) {
        EVP_MAC_CTX_free(ctx[i]);
    }
}


/* one HMAC-SHA256 context per non-empty line (a secret's bytes in hex), keyed now: a
 * request only restarts it */
static char *
ngx_http_htsgetr_direct_parse_keys(ngx_conf_t *cf, ngx_http_htsgetr_direct_conf_t *hcf,
    u_char *text, size_t size)
{
    u_char              *p, *last, *end, *line, *key;
    char                *rv;
    size_t               n, i;
    ngx_int_t            hi, lo;
    EVP_MAC             *hmac;
    EVP_MAC_CTX        **ctx;
    OSSL_PARAM           params[2];
    ngx_pool_cleanup_t  *cln;

    hcf->macs = ngx_array_create(cf->pool, 2, sizeof(EVP_MAC_CTX *));
    if (hcf->macs == NULL) {
        return NGX_CONF_ERROR;
    }

    cln = ngx_pool_cleanup_add(cf->pool, 0);
    if (cln == NULL) {
        return NGX_CONF_ERROR;
    }
    cln->handler = ngx_http_htsgetr_direct_free_macs;
    cln->data = hcf->macs;

    key = ngx_alloc(size / 2 + 1, cf->log);
    if (key == NULL) {
        return NGX_CONF_ERROR;
    }

    hmac = EVP_MAC_fetch(NULL, OSSL_MAC_NAME_HMAC, NULL);
    if (hmac == NULL) {
        ngx_free(key);
        return "cannot be used: OpenSSL has no HMAC";
    }

    params[0] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, "SHA256", 0);
    params[1] = OSSL_PARAM_construct_end();

    rv = NGX_CONF_OK;
    p = text;
    last = text + size;

    while (p < last) {
        line = p;
        end = ngx_strlchr(p, last, '\n');
        if (end == NULL) {
            end = last;
        }
        p = end + 1;

        if (end > line && end[-1] == '\r') {
            end--;
        }

        n = end - line;
        if (n == 0) {
            continue;
        }

        if (n % 2) {
            rv = "holds a line that is not hex";
            break;
        }

        for (i = 0; i < n / 2; i++) {
            hi = ngx_http_htsgetr_direct_hex(line[2 * i]);
            lo = ngx_http_htsgetr_direct_hex(line[2 * i + 1]);
            if (hi < 0 || lo < 0) {
                break;
            }
            key[i] = (u_char) (hi * 16 + lo);
        }

        if (i < n / 2) {
            rv = "holds a line that is not hex";
            break;
        }

        ctx = ngx_array_push(hcf->macs);
        if (ctx == NULL) {
            rv = NGX_CONF_ERROR;
            break;
        }

        *ctx = EVP_MAC_CTX_new(hmac);
        if (*ctx == NULL || !EVP_MAC_init(*ctx, key, n / 2, params)) {
            rv = "cannot be used: OpenSSL refused an HMAC-SHA256 key";
            break;
        }
    }

    if (rv == NGX_CONF_OK && hcf->macs->nelts == 0) {
        rv = "holds no secret";
    }

    ngx_explicit_memzero(key, size / 2 + 1);
    ngx_free(key);
    EVP_MAC_free(hmac);

    return rv;
}


static char *
ngx_http_htsgetr_direct_secrets(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_htsgetr_direct_conf_t *hcf = conf;

    char             *rv;
    u_char           *text;
    ssize_t           n;
    ngx_fd_t          fd;
    ngx_str_t        *value, name;
    ngx_file_info_t   fi;

    if (hcf->macs != NULL) {
        return "is duplicate";
    }

    value = cf->args->elts;
    name = value[1];

    if (ngx_conf_full_name(cf->cycle, &name, 1) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    fd = ngx_open_file(name.data, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);
    if (fd == NGX_INVALID_FILE) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           ngx_open_file_n " \"%s\" failed", name.data);
        return NGX_CONF_ERROR;
    }

    rv = NGX_CONF_ERROR;
    text = NULL;

    if (ngx_fd_info(fd, &fi) == NGX_FILE_ERROR) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           ngx_fd_info_n " \"%s\" failed", name.data);
        goto done;
    }

    if (!ngx_is_file(&fi) || ngx_file_size(&fi) > HTSGETR_KEYS_MAX) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%s\" is not a file of at most %d bytes", name.data,
                           HTSGETR_KEYS_MAX);
        goto done;
    }

    text = ngx_alloc((size_t) ngx_file_size(&fi) + 1, cf->log);
    if (text == NULL) {
        goto done;
    }

    n = ngx_read_fd(fd, text, (size_t) ngx_file_size(&fi));
    if (n < 0 || n != (ssize_t) ngx_file_size(&fi)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           ngx_read_fd_n " \"%s\" failed", name.data);
        goto done;
    }

    rv = ngx_http_htsgetr_direct_parse_keys(cf, hcf, text, (size_t) n);
    if (rv != NGX_CONF_OK && rv != NGX_CONF_ERROR) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "\"%s\" %s", name.data, rv);
        rv = NGX_CONF_ERROR;
    }

    ngx_explicit_memzero(text, (size_t) n);

done:

    if (text) {
        ngx_free(text);
    }

    if (ngx_close_file(fd) == NGX_FILE_ERROR) {
        ngx_conf_log_error(NGX_LOG_ALERT, cf, ngx_errno,
                           ngx_close_file_n " \"%s\" failed", name.data);
    }

    return rv;
}


static char *
ngx_http_htsgetr_direct_names(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_htsgetr_direct_conf_t *hcf = conf;

    u_char               errstr[NGX_MAX_CONF_ERRSTR];
    ngx_str_t           *value;
    ngx_regex_compile_t  rc;

    if (hcf->names != NULL) {
        return "is duplicate";
    }

    value = cf->args->elts;

    ngx_memzero(&rc, sizeof(ngx_regex_compile_t));
    rc.pattern = value[1];
    rc.pool = cf->pool;
    rc.err.len = NGX_MAX_CONF_ERRSTR;
    rc.err.data = errstr;

    if (ngx_regex_compile(&rc) != NGX_OK) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "%V", &rc.err);
        return NGX_CONF_ERROR;
    }

    hcf->names = rc.regex;

    return NGX_CONF_OK;
}
