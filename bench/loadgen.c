/*
 * loadgen.c: the pants-ts benchmark's load generator.
 *
 * One thread, one epoll set, non-blocking sockets, loopback targets only.
 * bench/run.ts compiles it (cc -O2, with -DWITH_OPENSSL -lssl -lcrypto when
 * OpenSSL's headers are there) into bench/build/ and drives it; it can also
 * be run by hand:
 *
 *   loadgen -m MODE -p PORT [-h 127.0.0.1] [options]
 *
 * Modes
 *   pingpong   -c conns, each with one S-byte line in flight ("xxx...\n");
 *              the next is sent when the whole echo is back.
 *   pipeline   like pingpong, but each connection sends -k lines in one write
 *              and waits for all -k replies before the next batch.
 *   bulk       -c conns stream -b byte writes and discard what comes back;
 *              at most -W bytes are in flight (sent, not yet echoed) per conn.
 *   churn      -c concurrent slots, each: connect, send one line, read the
 *              reply, close, repeat.
 *   handshake  (with -t) -c concurrent slots, each: connect, TLS handshake,
 *              close_notify and FIN, wait for the server's close, repeat.
 *   idle       open -c connections (at most -q unanswered at once), one line
 *              round trip on each, print "READY ok=N failed=F setup_secs=S",
 *              hold them until stdin closes (or -T seconds), close, report.
 *   flood      one connection writes -n bytes in -b byte writes as fast as
 *              the server takes them and never reads (a client that stopped
 *              reading echoes). It ends when everything is sent (then holds
 *              -T more seconds), when no byte could be written for -T
 *              seconds (default 1: the server stopped reading), or when the
 *              server closes. It then reports where the bytes are: this
 *              socket's send and receive queues (SIOCOUTQ, SIOCINQ) and the
 *              server socket's (from /proc/net/tcp), so
 *                accepted = sent - cli_txq - srv_rxq   (read by the server)
 *                held     = accepted - srv_txq - cli_rxq (still in the server's memory)
 *
 * -t runs every mode over TLS (no certificate check, no session resumption:
 * every handshake is a full one). -H sends "GET / HTTP/1.1" requests instead
 * of lines and frames the replies as HTTP/1.1 responses with Content-Length
 * (pingpong and pipeline only). -v prints the build's features and exits.
 *
 * Every run ends: after -w warm-up seconds and -d measured seconds, and an
 * alarm() ends the process (exit 3) if anything hangs. Exit codes: 0 done,
 * 1 bad usage, 2 could not connect / run, 3 timed out.
 *
 * Output: one line "RESULT key=value ..." on stdout (flood: the byte counts
 * above, stalled=0|1, closed=0|1 and flood_secs, the time to the last
 * accepted write). With -P PID the CPU
 * time of that process (the server) over the measured window is reported as
 * srv_cpu (percent of one core), beside this process's own cli_cpu;
 * cli_total_s is this process's CPU time over its whole life.
 *
 * -x HOOK runs the shell command "HOOK start" when the measured window
 * begins (the window starts when it returns) and "HOOK end" when it ends
 * (before the report); a hook that fails ends the run (exit 2). The
 * instruction counts of `npm run bench:instructions` zero and dump the
 * server's callgrind counters this way, so that only the window is counted.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <linux/sockios.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#ifdef WITH_OPENSSL
#include <openssl/err.h>
#include <openssl/ssl.h>
#endif

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

#define EXIT_USAGE 1
#define EXIT_RUN 2
#define EXIT_TIMEOUT 3

enum mode { MODE_PINGPONG, MODE_PIPELINE, MODE_BULK, MODE_CHURN, MODE_HANDSHAKE, MODE_IDLE, MODE_FLOOD };
static const char *const mode_names[] = { "pingpong", "pipeline", "bulk", "churn", "handshake", "idle", "flood" };

/* ------------------------------------------------------------------ options */

static struct {
    enum mode mode;
    const char *host;
    int port;
    int conns;
    size_t size;        /* line length including the '\n' */
    int depth;          /* requests per batch (pipeline) */
    size_t block;       /* bulk write size */
    size_t window;      /* bulk bytes in flight per connection */
    double duration;
    double warmup;
    double hold;        /* idle: longest hold; flood: seconds without progress that end it */
    int hold_set;       /* -T was given */
    uint64_t total;     /* flood: bytes to send */
    int max_pending;    /* idle: connections opened but not answered yet, at once */
    int nsrc;           /* spread source addresses over 127.0.0.1..nsrc (IPv4) */
    pid_t server_pid;
    const char *hook;
    int http;
    int tls;
} opt = {
    .mode = MODE_PINGPONG, .host = "127.0.0.1", .port = 0, .conns = 1, .size = 64,
    .depth = 16, .block = 65536, .window = 262144, .duration = 5.0, .warmup = 1.0,
    .hold = 120.0, .max_pending = 256, .nsrc = 32, .server_pid = 0, .http = 0, .tls = 0,
};

static void usage(const char *fmt, ...) {
    if (fmt != NULL) {
        va_list ap;
        va_start(ap, fmt);
        fputs("loadgen: ", stderr);
        vfprintf(stderr, fmt, ap);
        fputc('\n', stderr);
        va_end(ap);
    }
    fputs("usage: loadgen -m pingpong|pipeline|bulk|churn|handshake|idle|flood -p PORT [-h HOST]\n"
          "               [-c CONNS] [-s LINE_BYTES] [-k DEPTH] [-b BLOCK] [-W WINDOW] [-d SECS]\n"
          "               [-w SECS] [-T HOLD_SECS] [-q MAX_PENDING] [-S NSRC] [-P SERVER_PID] [-t] [-H]\n"
          "               [-n FLOOD_BYTES] [-x HOOK]\n"
          "       loadgen -v\n",
          stderr);
    exit(EXIT_USAGE);
}

static long parse_long(const char *s, long lo, long hi, char flag) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || *s == '\0' || *end != '\0' || v < lo || v > hi) {
        usage("-%c wants an integer in %ld..%ld, got \"%s\"", flag, lo, hi, s);
    }
    return v;
}

static double parse_secs(const char *s, char flag) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno != 0 || *s == '\0' || *end != '\0' || !(v >= 0.0 && v <= 86400.0)) {
        usage("-%c wants seconds, got \"%s\"", flag, s);
    }
    return v;
}

/* ------------------------------------------------------------------- clocks */

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t secs_to_ns(double s) { return (uint64_t)(s * 1e9); }

/* CPU seconds of this process. */
static double self_cpu(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

/* CPU seconds (utime + stime) of another process, from /proc/PID/stat; -1 if unknown. */
static double proc_cpu(pid_t pid) {
    if (pid <= 0) return -1.0;
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1.0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return -1.0;
    buf[n] = '\0';
    /* The command name may hold spaces and parentheses: fields restart after the last ')'. */
    char *p = strrchr(buf, ')');
    if (p == NULL) return -1.0;
    unsigned long long utime = 0, stime = 0;
    char *save = NULL;
    int field = 3; /* the first token after ") " is field 3, the state */
    for (char *tok = strtok_r(p + 1, " ", &save); tok != NULL && field <= 15; tok = strtok_r(NULL, " ", &save), field++) {
        if (field == 14) utime = strtoull(tok, NULL, 10);
        if (field == 15) stime = strtoull(tok, NULL, 10);
    }
    return (double)(utime + stime) / (double)sysconf(_SC_CLK_TCK);
}

/* ------------------------------------------------------- latency histogram */
/*
 * Log-linear buckets over nanoseconds: values below 2^SUB_BITS have a bucket
 * each; above, every power of two is split into 2^SUB_BITS equal buckets
 * (relative error under 1%).
 */
#define SUB_BITS 7
#define SUB_COUNT (1u << SUB_BITS)
#define NBUCKETS (64u * SUB_COUNT)

static uint64_t hist[NBUCKETS];
static uint64_t hist_total;
static uint64_t hist_max;

static unsigned bucket_of(uint64_t ns) {
    if (ns < SUB_COUNT) return (unsigned)ns;
    unsigned msb = 63u - (unsigned)__builtin_clzll(ns);
    unsigned shift = msb - SUB_BITS;
    return ((shift + 1u) << SUB_BITS) + (unsigned)((ns >> shift) & (SUB_COUNT - 1u));
}

static double bucket_mid_ns(unsigned b) {
    if (b < SUB_COUNT) return (double)b;
    unsigned shift = (b >> SUB_BITS) - 1u;
    double low = (double)((uint64_t)(SUB_COUNT + (b & (SUB_COUNT - 1u))) << shift);
    return low + (double)((uint64_t)1 << shift) / 2.0;
}

static void hist_add(uint64_t ns) {
    hist[bucket_of(ns)]++;
    hist_total++;
    if (ns > hist_max) hist_max = ns;
}

static void hist_clear(void) {
    memset(hist, 0, sizeof hist);
    hist_total = 0;
    hist_max = 0;
}

/* The q-quantile in microseconds (0 without samples): the nearest-rank one, the ceil(q*N)-th smallest. */
static double hist_quantile_us(double q) {
    if (hist_total == 0) return 0.0;
    double want = q * (double)hist_total;
    uint64_t nth = (uint64_t)want;
    if ((double)nth < want) nth++;
    if (nth == 0) nth = 1;
    uint64_t rank = nth - 1; /* 0-based */
    if (rank >= hist_total) rank = hist_total - 1;
    uint64_t seen = 0;
    for (unsigned b = 0; b < NBUCKETS; b++) {
        seen += hist[b];
        if (seen > rank) return bucket_mid_ns(b) / 1000.0;
    }
    return (double)hist_max / 1000.0;
}


/* ------------------------------------------------------------- connections */

enum conn_state {
    C_FREE,
    C_CONNECTING, /* TCP connect under way */
    C_HANDSHAKE,  /* TLS handshake under way */
    C_OPEN,       /* exchanging requests and replies */
    C_IDLE,       /* idle mode: answered once, held */
    C_CLOSING,    /* handshake mode: close sent, waiting for the server's */
};

struct http_reader {
    char head[2048];
    size_t head_len;
    size_t body_left;
    int in_body;
};

struct conn {
    int fd;
    enum conn_state state;
    uint32_t events;         /* the epoll interest currently registered */
    size_t out_off;          /* bytes of the current request batch written */
    size_t in_bytes;         /* bytes of the current reply batch received */
    int replies_left;        /* replies still expected for the current batch */
    uint64_t started;        /* send time of the batch (churn, handshake: connect start) */
    uint64_t sent, echoed;   /* bulk accounting */
    size_t retry_len;        /* bulk over TLS: a write to repeat with the same length */
#ifdef WITH_OPENSSL
    SSL *ssl;
#endif
    struct http_reader http;
};

static int ep = -1;
static struct conn *conns;
static char *request;        /* one batch: depth requests back to back */
static size_t request_len;
static size_t reply_len;     /* expected bytes of a whole batch of line replies */
static char *block;          /* bulk payload */
static struct sockaddr_storage target;
static socklen_t target_len;
static int src_next;
static char rbuf[256 * 1024];

/* Counters; the measured ones restart when the measured window opens. */
static int measuring;
static uint64_t done_count;   /* replies / connections / handshakes completed */
static uint64_t echoed_bytes; /* bulk */
static uint64_t errors, proto_errors, connect_failures;
static int completed_any;
static int idle_opened, idle_ok, idle_failed, idle_still_open;

/* Marker for the stdin watch in idle mode (its epoll data pointer). */
static struct conn stdin_marker = { .fd = 0 };

static void on_alarm(int sig) {
    (void)sig;
    static const char msg[] = "loadgen: timed out (alarm)\n";
    ssize_t ignored = write(2, msg, sizeof msg - 1);
    (void)ignored;
    _exit(EXIT_TIMEOUT);
}

static void die(int code, const char *what) {
    fprintf(stderr, "loadgen: %s: %s\n", what, strerror(errno));
    exit(code);
}

static void set_events(struct conn *c, uint32_t events) {
    if (c->events == events) return;
    struct epoll_event ev = { .events = events, .data.ptr = c };
    if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) < 0) die(EXIT_RUN, "epoll_ctl(MOD)");
    c->events = events;
}

/* ---------------------------------------------------------- TCP or TLS I/O */

#define IO_AGAIN (-2) /* would block */
#define IO_FAIL (-1)  /* broken connection */

#ifdef WITH_OPENSSL
static SSL_CTX *tls_ctx;

static void tls_init(void) {
    tls_ctx = SSL_CTX_new(TLS_client_method());
    if (tls_ctx == NULL) {
        ERR_print_errors_fp(stderr);
        exit(EXIT_RUN);
    }
    SSL_CTX_set_verify(tls_ctx, SSL_VERIFY_NONE, NULL);           /* a throwaway certificate */
    SSL_CTX_set_session_cache_mode(tls_ctx, SSL_SESS_CACHE_OFF);  /* every handshake a full one */
    SSL_CTX_set_mode(tls_ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
}

/* IO_AGAIN for the retryable outcomes of an SSL call, else IO_FAIL (0 for a clean close). */
static int tls_outcome(struct conn *c, int ret) {
    switch (SSL_get_error(c->ssl, ret)) {
    case SSL_ERROR_WANT_READ:
    case SSL_ERROR_WANT_WRITE: return IO_AGAIN;
    case SSL_ERROR_ZERO_RETURN: return 0;
    default: ERR_clear_error(); return IO_FAIL;
    }
}
#endif

/* Bytes written (> 0), IO_AGAIN or IO_FAIL. */
static ssize_t io_send(struct conn *c, const char *buf, size_t len) {
#ifdef WITH_OPENSSL
    if (c->ssl != NULL) {
        int n = SSL_write(c->ssl, buf, len > INT32_MAX ? INT32_MAX : (int)len);
        if (n > 0) return n;
        int r = tls_outcome(c, n);
        return r == IO_AGAIN ? IO_AGAIN : IO_FAIL;
    }
#endif
    for (;;) {
        ssize_t n = send(c->fd, buf, len, MSG_NOSIGNAL);
        if (n >= 0) return n;
        if (errno == EINTR) continue;
        return errno == EAGAIN ? IO_AGAIN : IO_FAIL;
    }
}

/* Bytes read (> 0), 0 at the peer's close, IO_AGAIN or IO_FAIL. buf NULL: discard (TCP only). */
static ssize_t io_recv(struct conn *c, char *buf, size_t len) {
#ifdef WITH_OPENSSL
    if (c->ssl != NULL) {
        int n = SSL_read(c->ssl, buf != NULL ? buf : rbuf, (int)(len < sizeof rbuf ? len : sizeof rbuf));
        return n > 0 ? n : tls_outcome(c, n);
    }
#endif
    for (;;) {
        /* MSG_TRUNC on TCP discards the bytes without copying them out. */
        ssize_t n = buf != NULL ? recv(c->fd, buf, len, 0) : recv(c->fd, NULL, len, MSG_TRUNC);
        if (n >= 0) return n;
        if (errno == EINTR) continue;
        return errno == EAGAIN ? IO_AGAIN : IO_FAIL;
    }
}

static void conn_close(struct conn *c) {
#ifdef WITH_OPENSSL
    if (c->ssl != NULL) SSL_free(c->ssl);
    c->ssl = NULL;
#endif
    if (c->fd >= 0) close(c->fd); /* also leaves the epoll set */
    c->fd = -1;
    c->state = C_FREE;
    c->events = 0;
}

/* Starts a non-blocking connect; the socket is watched for EPOLLOUT. Returns 0 or -1. */
static int conn_open(struct conn *c) {
    int fd = socket(target.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        if (errno == EMFILE || errno == ENFILE) return -1;
        die(EXIT_RUN, "socket");
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (target.ss_family == AF_INET && opt.nsrc > 1) {
        /* Many source addresses, so TIME_WAIT of closed connections never exhausts the ports. */
        struct sockaddr_in src = { .sin_family = AF_INET, .sin_port = 0 };
        src.sin_addr.s_addr = htonl(0x7f000001u + (uint32_t)(src_next++ % opt.nsrc));
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        if (bind(fd, (struct sockaddr *)&src, sizeof src) < 0) {
            close(fd);
            return -1;
        }
    }
    memset(c, 0, sizeof *c);
    c->fd = fd;
    c->started = now_ns();
    if (connect(fd, (struct sockaddr *)&target, target_len) < 0 && errno != EINPROGRESS) {
        close(fd);
        c->fd = -1;
        return -1;
    }
    c->state = C_CONNECTING;
    c->events = EPOLLOUT;
    struct epoll_event ev = { .events = EPOLLOUT, .data.ptr = c };
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) die(EXIT_RUN, "epoll_ctl(ADD)");
    return 0;
}

/* SO_ERROR of a connecting socket: 0 when connected. */
static int connect_result(struct conn *c) {
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) return errno;
    return err;
}

/* ------------------------------------------------------ requests, replies */

/* Writes what is left of the current batch; watches EPOLLOUT while the socket is full. */
static int send_rest(struct conn *c) {
    while (c->out_off < request_len) {
        ssize_t n = io_send(c, request + c->out_off, request_len - c->out_off);
        if (n == IO_AGAIN) break;
        if (n < 0) return -1;
        c->out_off += (size_t)n;
    }
    set_events(c, c->out_off < request_len ? EPOLLIN | EPOLLOUT : EPOLLIN);
    return 0;
}

static int send_batch(struct conn *c) {
    c->out_off = 0;
    c->in_bytes = 0;
    c->replies_left = opt.depth;
    c->started = now_ns();
    memset(&c->http, 0, sizeof c->http);
    return send_rest(c);
}

/* Takes a whole response head (len bytes, ending in CRLF CRLF): 0, or -1 unless a 200 with a Content-Length. */
static int http_head(struct http_reader *h, const char *head, size_t len) {
    static const char field[] = "\r\ncontent-length:";
    const size_t field_len = sizeof field - 1;
    if (len < 12 || memcmp(head, "HTTP/1.1 200", 12) != 0) return -1;
    for (const char *p = head; (p = memchr(p, '\r', len - (size_t)(p - head))) != NULL; p++) {
        size_t left = len - (size_t)(p - head);
        if (left < field_len + 2) break;
        if (strncasecmp(p, field, field_len) != 0) continue;
        size_t value = 0;
        const char *d = p + field_len;
        while (*d == ' ') d++;
        if (*d < '0' || *d > '9') return -1;
        while (*d >= '0' && *d <= '9') value = value * 10 + (size_t)(*d++ - '0');
        h->body_left = value;
        h->in_body = 1;
        return 0;
    }
    return -1;
}

/*
 * Counts complete HTTP responses in data; -1 on a malformed or non-200
 * response. A head that arrived whole is read in place; one cut by a read
 * is gathered in h->head first.
 */
static int http_feed(struct http_reader *h, const char *data, size_t len) {
    int complete = 0;
    size_t i = 0;
    while (i < len) {
        if (h->in_body) {
            size_t take = len - i < h->body_left ? len - i : h->body_left;
            h->body_left -= take;
            i += take;
        } else {
            const char *end = h->head_len == 0 ? memmem(data + i, len - i, "\r\n\r\n", 4) : NULL;
            if (end != NULL) {
                size_t head_len = (size_t)(end + 4 - (data + i));
                if (http_head(h, data + i, head_len) < 0) return -1;
                i += head_len;
            } else {
                if (h->head_len >= sizeof h->head - 1) return -1;
                h->head[h->head_len++] = data[i++];
                if (h->head_len >= 4 && memcmp(h->head + h->head_len - 4, "\r\n\r\n", 4) == 0) {
                    if (http_head(h, h->head, h->head_len) < 0) return -1;
                    h->head_len = 0;
                }
            }
        }
        if (h->in_body && h->body_left == 0) {
            h->in_body = 0;
            complete++;
        }
    }
    return complete;
}

/* Counts the replies in data for the current batch; -1 on a protocol error. */
static int count_replies(struct conn *c, const char *data, size_t len) {
    if (opt.http) return http_feed(&c->http, data, len);
    int n = 0;
    const char *p = data, *end = data + len;
    while ((p = memchr(p, '\n', (size_t)(end - p))) != NULL) {
        n++;
        p++;
    }
    c->in_bytes += len;
    return n;
}

/*
 * Reads what is there. Returns 1 when the whole batch is back, 0 when more
 * is due, -1 when the connection failed or broke the protocol.
 */
static int read_replies(struct conn *c) {
    for (;;) {
        ssize_t n = io_recv(c, rbuf, sizeof rbuf);
        if (n == IO_AGAIN) return 0;
        if (n <= 0) return -1; /* failed, or the server closed */
        int got = count_replies(c, rbuf, (size_t)n);
        if (got < 0 || got > c->replies_left) {
            proto_errors++;
            return -1;
        }
        c->replies_left -= got;
        if (c->replies_left == 0) {
            if (!opt.http && c->in_bytes != reply_len) {
                proto_errors++;
                return -1;
            }
            return 1;
        }
    }
}

/* ------------------------------------------------------------------ bulk */

static int bulk_pump(struct conn *c) {
    for (;;) {
        size_t len = c->retry_len;
        if (len == 0) {
            uint64_t in_flight = c->sent - c->echoed;
            if (in_flight >= opt.window) break;
            size_t room = (size_t)(opt.window - in_flight);
            len = room < opt.block ? room : opt.block;
        }
        ssize_t n = io_send(c, block, len);
        if (n == IO_AGAIN) {
            c->retry_len = len; /* TLS wants the same write again */
            set_events(c, EPOLLIN | EPOLLOUT);
            return 0;
        }
        if (n < 0) return -1;
        c->retry_len = 0;
        c->sent += (uint64_t)n;
    }
    set_events(c, EPOLLIN); /* the window is full: wait for echoes */
    return 0;
}

static int bulk_drain(struct conn *c) {
    for (;;) {
        ssize_t n = io_recv(c, NULL, 1u << 20);
        if (n == IO_AGAIN) return 0;
        if (n <= 0) return -1;
        c->echoed += (uint64_t)n;
        completed_any = 1;
        if (measuring) echoed_bytes += (uint64_t)n;
    }
}

/* ----------------------------------------------------------- per mode */

static void on_ready(struct conn *c);

/* A connection failed: count it and, in the modes that keep a fixed number open, replace it. */
static void on_failure(struct conn *c, int while_connecting) {
    conn_close(c);
    if (opt.mode == MODE_IDLE) {
        idle_failed++;
        return;
    }
    if (while_connecting) connect_failures++;
    else errors++;
    if (opt.mode != MODE_BULK && conn_open(c) < 0) connect_failures++;
}

/* The cycle of a churn or handshake slot is over: start the next one. */
static void recycle(struct conn *c) {
    conn_close(c);
    if (conn_open(c) < 0) connect_failures++;
}

static void count_done(struct conn *c, uint64_t n) {
    completed_any = 1;
    if (measuring) {
        done_count += n;
        hist_add(now_ns() - c->started);
    }
}

/* A whole reply batch arrived. */
static void on_replies(struct conn *c) {
    switch (opt.mode) {
    case MODE_PINGPONG:
    case MODE_PIPELINE:
        count_done(c, (uint64_t)opt.depth);
        if (send_batch(c) < 0) on_failure(c, 0);
        break;
    case MODE_CHURN:
        count_done(c, 1);
        recycle(c);
        break;
    case MODE_IDLE:
        c->state = C_IDLE;
        idle_ok++;
        idle_still_open++;
        break;
    case MODE_BULK:
    case MODE_HANDSHAKE:
    case MODE_FLOOD: break;
    }
}

/* The connection is usable: TCP connected, and over TLS the handshake done. */
static void on_ready(struct conn *c) {
    c->state = C_OPEN;
    switch (opt.mode) {
    case MODE_BULK:
        if (bulk_pump(c) < 0) on_failure(c, 0);
        return;
    case MODE_HANDSHAKE:
        count_done(c, 1);
#ifdef WITH_OPENSSL
        SSL_shutdown(c->ssl); /* close_notify */
#endif
        shutdown(c->fd, SHUT_WR);
        c->state = C_CLOSING;
        set_events(c, EPOLLIN);
        return;
    case MODE_CHURN: {
        uint64_t started = c->started; /* latency of the whole cycle, from the connect */
        if (send_batch(c) < 0) on_failure(c, 0);
        else c->started = started;
        return;
    }
    default:
        if (send_batch(c) < 0) on_failure(c, 0);
        return;
    }
}

#ifdef WITH_OPENSSL
static void handshake_step(struct conn *c) {
    int r = SSL_connect(c->ssl);
    if (r == 1) {
        on_ready(c);
        return;
    }
    switch (SSL_get_error(c->ssl, r)) {
    case SSL_ERROR_WANT_READ: set_events(c, EPOLLIN); return;
    case SSL_ERROR_WANT_WRITE: set_events(c, EPOLLOUT); return;
    default:
        ERR_clear_error();
        on_failure(c, 1);
    }
}
#endif

static void on_event(struct conn *c, uint32_t ev) {
    switch (c->state) {
    case C_FREE: return;
    case C_CONNECTING:
        if (connect_result(c) != 0) {
            on_failure(c, 1);
            return;
        }
#ifdef WITH_OPENSSL
        if (opt.tls) {
            c->ssl = SSL_new(tls_ctx);
            if (c->ssl == NULL || SSL_set_fd(c->ssl, c->fd) != 1) die(EXIT_RUN, "SSL_new");
            SSL_set_connect_state(c->ssl);
            c->state = C_HANDSHAKE;
            handshake_step(c);
            return;
        }
#endif
        on_ready(c);
        return;
    case C_HANDSHAKE:
#ifdef WITH_OPENSSL
        handshake_step(c);
#endif
        return;
    case C_OPEN:
        if (opt.mode == MODE_BULK) {
            if (((ev & (EPOLLIN | EPOLLERR | EPOLLHUP)) && bulk_drain(c) < 0) || bulk_pump(c) < 0) on_failure(c, 0);
            return;
        }
        if ((ev & EPOLLOUT) && send_rest(c) < 0) {
            on_failure(c, 0);
            return;
        }
        if (ev & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
            int r = read_replies(c);
            if (r < 0) on_failure(c, 0);
            else if (r == 1) on_replies(c);
        }
        return;
    case C_IDLE:
        /* Data or EOF on a held connection: the server closed it (or misbehaved). */
        idle_still_open--;
        conn_close(c);
        return;
    case C_CLOSING:
        /* Whatever the server still sends (session tickets, its close_notify) until it closes. */
        for (;;) {
            ssize_t n = recv(c->fd, NULL, 1u << 16, MSG_TRUNC | MSG_DONTWAIT);
            if (n > 0) continue;
            if (n < 0 && errno == EINTR) continue;
            if (n < 0 && errno == EAGAIN) return;
            recycle(c); /* closed (or reset): the cycle is over */
            return;
        }
    }
}

/* --------------------------------------------------------------- run loops */

static struct epoll_event events[1024];

/* One epoll round of at most timeout_ms; returns 1 if stdin (idle mode) became readable. */
static int poll_once(int timeout_ms) {
    int n = epoll_wait(ep, events, (int)(sizeof events / sizeof events[0]), timeout_ms);
    if (n < 0) {
        if (errno == EINTR) return 0;
        die(EXIT_RUN, "epoll_wait");
    }
    int stdin_ready = 0;
    for (int i = 0; i < n; i++) {
        struct conn *c = events[i].data.ptr;
        if (c == &stdin_marker) stdin_ready = 1;
        else on_event(c, events[i].events);
    }
    return stdin_ready;
}

static void print_rate_result(double secs, double srv_cpu, double cli_cpu) {
    double rate = (double)done_count / secs;
    printf("RESULT mode=%s tls=%d conns=%d size=%zu depth=%d secs=%.3f count=%llu rate=%.1f", mode_names[opt.mode],
           opt.tls, opt.conns, opt.size, opt.depth, secs, (unsigned long long)done_count, rate);
    if (opt.mode == MODE_BULK) {
        printf(" bytes=%llu mbps=%.1f", (unsigned long long)echoed_bytes, (double)echoed_bytes / secs / 1e6);
    } else {
        printf(" p50_us=%.1f p90_us=%.1f p99_us=%.1f max_us=%.1f", hist_quantile_us(0.50),
               hist_quantile_us(0.90), hist_quantile_us(0.99), (double)hist_max / 1000.0);
    }
    printf(" errors=%llu proto_errors=%llu connect_failures=%llu srv_cpu=%.1f cli_cpu=%.1f cli_total_s=%.3f\n",
           (unsigned long long)errors, (unsigned long long)proto_errors,
           (unsigned long long)connect_failures, srv_cpu, cli_cpu, self_cpu());
    fflush(stdout);
}

/* Runs "HOOK phase" (-x) to its end; 0 when there is no hook or it succeeded. */
static int run_hook(const char *phase) {
    if (opt.hook == NULL) return 0;
    char command[4096];
    int n = snprintf(command, sizeof command, "%s %s", opt.hook, phase);
    if (n < 0 || (size_t)n >= sizeof command) {
        fprintf(stderr, "loadgen: the -x hook is too long\n");
        return -1;
    }
    int status = system(command);
    if (status != 0) {
        fprintf(stderr, "loadgen: the hook \"%s\" failed (status %d)\n", command, status);
        return -1;
    }
    return 0;
}

/* pingpong, pipeline, bulk, churn, handshake: warm up, then measure for the duration. */
static int run_timed(void) {
    for (int i = 0; i < opt.conns; i++) {
        if (conn_open(&conns[i]) < 0) connect_failures++;
    }
    uint64_t t_begin = now_ns();
    uint64_t t_measure = t_begin + secs_to_ns(opt.warmup);
    uint64_t t_end = t_measure + secs_to_ns(opt.duration);
    double srv0 = -1, cli0 = 0;
    uint64_t t = t_begin;
    while (t < t_end) {
        poll_once(measuring ? 10 : 1);
        t = now_ns();
        if (!measuring && t >= t_measure) {
            measuring = 1;
            done_count = 0;
            echoed_bytes = 0;
            errors = proto_errors = connect_failures = 0;
            hist_clear();
            if (run_hook("start") < 0) return EXIT_RUN;
            srv0 = proc_cpu(opt.server_pid);
            cli0 = self_cpu();
            t = now_ns();
            t_measure = t;
            t_end = t_measure + secs_to_ns(opt.duration);
        }
        if (!measuring && !completed_any && t - t_begin > secs_to_ns(5.0)) {
            fprintf(stderr, "loadgen: no reply from %s:%d within 5 s (%llu failed connects)\n", opt.host, opt.port,
                    (unsigned long long)connect_failures);
            return EXIT_RUN;
        }
    }
    double secs = (double)(t - t_measure) / 1e9;
    double srv1 = proc_cpu(opt.server_pid);
    double srv_cpu = srv0 >= 0 && srv1 >= 0 ? 100.0 * (srv1 - srv0) / secs : -1.0;
    double cli_cpu = 100.0 * (self_cpu() - cli0) / secs;
    if (run_hook("end") < 0) return EXIT_RUN;
    print_rate_result(secs, srv_cpu, cli_cpu);
    if (done_count == 0 && echoed_bytes == 0) {
        fprintf(stderr, "loadgen: nothing completed in the measured window\n");
        return EXIT_RUN;
    }
    return 0;
}

/*
 * A connection is pending from its connect until its first reply: bounding
 * those (not just the connects) keeps the server's accept queue short, so no
 * SYN is dropped and retried a second later.
 */
static void idle_open_more(void) {
    while (idle_opened < opt.conns && idle_opened - idle_ok - idle_failed < opt.max_pending) {
        if (conn_open(&conns[idle_opened++]) < 0) idle_failed++;
    }
}

static int run_idle(void) {
    uint64_t t_begin = now_ns();
    idle_open_more();
    while (idle_ok + idle_failed < opt.conns) {
        poll_once(10);
        idle_open_more();
    }
    double setup = (double)(now_ns() - t_begin) / 1e9;
    printf("READY ok=%d failed=%d setup_secs=%.3f\n", idle_ok, idle_failed, setup);
    fflush(stdout);

    /* Hold until stdin is closed (or readable) or the hold time is over. */
    struct epoll_event ev = { .events = EPOLLIN, .data.ptr = &stdin_marker };
    if (epoll_ctl(ep, EPOLL_CTL_ADD, 0, &ev) < 0) fprintf(stderr, "loadgen: not watching stdin; holding %.0f s\n", opt.hold);
    uint64_t t_stop = now_ns() + secs_to_ns(opt.hold);
    while (now_ns() < t_stop) {
        if (poll_once(100)) break;
    }
    int still_open = idle_still_open;
    printf("RESULT mode=idle tls=%d conns=%d ok=%d failed=%d still_open=%d setup_secs=%.3f cli_total_s=%.3f\n", opt.tls,
           opt.conns, idle_ok, idle_failed, still_open, setup, self_cpu());
    fflush(stdout);
    return idle_ok > 0 ? 0 : EXIT_RUN;
}

/* -------------------------------------------------------------------- flood */

/*
 * tx_queue and rx_queue of the established TCP socket with these ports, from
 * /proc/net/tcp (or tcp6): unacknowledged bytes in its send queue, unread
 * bytes in its receive queue. Returns 0 when found.
 */
static int tcp_queues(unsigned local_port, unsigned remote_port, unsigned long *txq, unsigned long *rxq) {
    static const char *const files[] = { "/proc/net/tcp", "/proc/net/tcp6" };
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        FILE *f = fopen(files[i], "re");
        if (f == NULL) continue;
        char line[512];
        int found = 0;
        while (!found && fgets(line, sizeof line, f) != NULL) {
            char local[64], remote[64];
            unsigned state;
            unsigned long tx, rx;
            if (sscanf(line, " %*u: %63s %63s %x %lx:%lx", local, remote, &state, &tx, &rx) != 5) continue;
            const char *lp = strrchr(local, ':'), *rp = strrchr(remote, ':');
            if (lp == NULL || rp == NULL || state != 1 /* TCP_ESTABLISHED */) continue;
            if (strtoul(lp + 1, NULL, 16) == local_port && strtoul(rp + 1, NULL, 16) == remote_port) {
                *txq = tx;
                *rxq = rx;
                found = 1;
            }
        }
        fclose(f);
        if (found) return 0;
    }
    return -1;
}

static unsigned local_port_of(int fd) {
    struct sockaddr_storage me;
    socklen_t len = sizeof me;
    if (getsockname(fd, (struct sockaddr *)&me, &len) < 0) return 0;
    if (me.ss_family == AF_INET6) return ntohs(((struct sockaddr_in6 *)&me)->sin6_port);
    return ntohs(((struct sockaddr_in *)&me)->sin_port);
}

/* One connection writes opt.total bytes and never reads; see "flood" at the top. */
static int run_flood(void) {
    struct conn *c = &conns[0];
    if (conn_open(c) < 0) die(EXIT_RUN, "connect");
    for (;;) {
        int n = epoll_wait(ep, events, 1, 5000);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0 || connect_result(c) != 0) {
            fprintf(stderr, "loadgen: cannot connect to %s:%d\n", opt.host, opt.port);
            return EXIT_RUN;
        }
        break;
    }
    unsigned my_port = local_port_of(c->fd);
    set_events(c, EPOLLOUT | EPOLLRDHUP);
    uint64_t stall_ns = secs_to_ns(opt.hold_set ? opt.hold : 1.0);
    uint64_t t_begin = now_ns(), last = t_begin, sent = 0;
    int closed = 0;
    for (;;) {
        if (sent < opt.total) {
            size_t len = opt.total - sent < opt.block ? (size_t)(opt.total - sent) : opt.block;
            ssize_t n = send(c->fd, block, len, MSG_NOSIGNAL);
            if (n > 0) {
                sent += (uint64_t)n;
                last = now_ns();
                continue;
            }
            if (n < 0 && errno == EINTR) continue;
            if (n < 0 && errno != EAGAIN) {
                closed = 1; /* reset by the server */
                break;
            }
            if (sent == opt.total) set_events(c, EPOLLRDHUP);
        } else {
            set_events(c, EPOLLRDHUP); /* everything sent: hold on, still not reading */
        }
        if (now_ns() - last >= stall_ns) break;
        int n = epoll_wait(ep, events, 1, 50);
        if (n > 0 && (events[0].events & (EPOLLRDHUP | EPOLLERR | EPOLLHUP))) {
            closed = 1; /* the server closed the connection */
            break;
        }
    }
    int stalled = !closed && sent < opt.total;
    printf("RESULT mode=flood total=%llu sent=%llu stalled=%d closed=%d flood_secs=%.3f", (unsigned long long)opt.total,
           (unsigned long long)sent, stalled, closed, (double)(last - t_begin) / 1e9);
    int outq = -1, inq = -1;
    unsigned long srv_tx = 0, srv_rx = 0;
    if (!closed && ioctl(c->fd, SIOCOUTQ, &outq) == 0 && ioctl(c->fd, SIOCINQ, &inq) == 0 &&
        tcp_queues((unsigned)opt.port, my_port, &srv_tx, &srv_rx) == 0) {
        long long accepted = (long long)sent - outq - (long long)srv_rx;
        long long held = accepted - (long long)srv_tx - inq;
        printf(" cli_txq=%d cli_rxq=%d srv_txq=%lu srv_rxq=%lu accepted=%lld held=%lld", outq, inq, srv_tx, srv_rx,
               accepted, held);
    }
    printf(" errors=0 cli_total_s=%.3f\n", self_cpu());
    fflush(stdout);
    return sent > 0 ? 0 : EXIT_RUN;
}

/* -------------------------------------------------------------------- main */

static void resolve_target(void) {
    memset(&target, 0, sizeof target);
    struct sockaddr_in *v4 = (struct sockaddr_in *)&target;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&target;
    if (inet_pton(AF_INET, opt.host, &v4->sin_addr) == 1) {
        if ((ntohl(v4->sin_addr.s_addr) >> 24) != 127) usage("refusing a non-loopback target %s", opt.host);
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)opt.port);
        target_len = sizeof *v4;
    } else if (inet_pton(AF_INET6, opt.host, &v6->sin6_addr) == 1) {
        if (!IN6_IS_ADDR_LOOPBACK(&v6->sin6_addr)) usage("refusing a non-loopback target %s", opt.host);
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)opt.port);
        target_len = sizeof *v6;
    } else {
        usage("-h wants a numeric loopback address (127.x.y.z or ::1), got \"%s\"", opt.host);
    }
}

static void build_payloads(void) {
    if (opt.mode != MODE_PIPELINE) opt.depth = 1;
    if (opt.http && opt.mode != MODE_PINGPONG && opt.mode != MODE_PIPELINE) usage("-H is for pingpong and pipeline");
    char one[4096];
    size_t one_len;
    if (opt.http) {
        int n = snprintf(one, sizeof one, "GET / HTTP/1.1\r\nHost: %s:%d\r\nUser-Agent: pants-ts-loadgen\r\n\r\n",
                         opt.host, opt.port);
        one_len = (size_t)n;
    } else {
        if (opt.size < 2 || opt.size > sizeof one) usage("-s wants 2..%zu bytes", sizeof one);
        for (size_t i = 0; i + 1 < opt.size; i++) one[i] = (char)('a' + i % 26);
        one[opt.size - 1] = '\n';
        one_len = opt.size;
    }
    request_len = one_len * (size_t)opt.depth;
    reply_len = opt.size * (size_t)opt.depth;
    request = malloc(request_len);
    if (request == NULL) die(EXIT_RUN, "malloc");
    for (int i = 0; i < opt.depth; i++) memcpy(request + (size_t)i * one_len, one, one_len);
    if (opt.mode == MODE_BULK || opt.mode == MODE_FLOOD) {
        block = malloc(opt.block);
        if (block == NULL) die(EXIT_RUN, "malloc");
        for (size_t i = 0; i < opt.block; i++) block[i] = (char)('A' + i % 23);
    }
}

/* Enough descriptors for every connection (up to the hard limit). */
static void raise_nofile(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return;
    rlim_t want = (rlim_t)opt.conns + 64;
    if (rl.rlim_cur >= want) return;
    rl.rlim_cur = rl.rlim_max < want ? rl.rlim_max : want;
    setrlimit(RLIMIT_NOFILE, &rl);
}

#ifdef WITH_OPENSSL
#define HAVE_TLS 1
#else
#define HAVE_TLS 0
#endif

int main(int argc, char **argv) {
    int ch;
    int mode_set = 0;
    while ((ch = getopt(argc, argv, "m:h:p:c:s:k:b:W:d:w:T:q:S:P:n:x:tHv")) != -1) {
        switch (ch) {
        case 'm': {
            int found = 0;
            for (int i = 0; i < (int)(sizeof mode_names / sizeof mode_names[0]); i++) {
                if (strcmp(optarg, mode_names[i]) == 0) {
                    opt.mode = (enum mode)i;
                    found = 1;
                }
            }
            if (!found) usage("unknown mode \"%s\"", optarg);
            mode_set = 1;
            break;
        }
        case 'h': opt.host = optarg; break;
        case 'p': opt.port = (int)parse_long(optarg, 1, 65535, 'p'); break;
        case 'c': opt.conns = (int)parse_long(optarg, 1, 1000000, 'c'); break;
        case 's': opt.size = (size_t)parse_long(optarg, 2, 4096, 's'); break;
        case 'k': opt.depth = (int)parse_long(optarg, 1, 1024, 'k'); break;
        case 'b': opt.block = (size_t)parse_long(optarg, 1, 64L << 20, 'b'); break;
        case 'W': opt.window = (size_t)parse_long(optarg, 1, 1L << 30, 'W'); break;
        case 'd': opt.duration = parse_secs(optarg, 'd'); break;
        case 'w': opt.warmup = parse_secs(optarg, 'w'); break;
        case 'T':
            opt.hold = parse_secs(optarg, 'T');
            opt.hold_set = 1;
            break;
        case 'n': opt.total = (uint64_t)parse_long(optarg, 1, 1L << 40, 'n'); break;
        case 'q': opt.max_pending = (int)parse_long(optarg, 1, 100000, 'q'); break;
        case 'S': opt.nsrc = (int)parse_long(optarg, 1, 250, 'S'); break;
        case 'P': opt.server_pid = (pid_t)parse_long(optarg, 1, 1L << 30, 'P'); break;
        case 'x': opt.hook = optarg; break;
        case 't': opt.tls = 1; break;
        case 'H': opt.http = 1; break;
        case 'v':
            printf("loadgen tls=%d\n", HAVE_TLS);
            return 0;
        default: usage(NULL);
        }
    }
    if (optind != argc) usage("unexpected argument \"%s\"", argv[optind]);
    if (!mode_set || opt.port == 0) usage("-m and -p are required");
    if (opt.duration <= 0 && opt.mode != MODE_IDLE) usage("-d must be positive");
    if (opt.tls && !HAVE_TLS) usage("this loadgen was built without OpenSSL (-t needs -DWITH_OPENSSL -lssl -lcrypto)");
    if (opt.mode == MODE_HANDSHAKE && !opt.tls) usage("-m handshake needs -t");
    if (opt.mode == MODE_FLOOD) {
        if (opt.total == 0) usage("-m flood needs -n BYTES");
        if (opt.tls) usage("-m flood is plain TCP only");
        opt.conns = 1;
    }

    resolve_target();
    build_payloads();
    raise_nofile();
#ifdef WITH_OPENSSL
    if (opt.tls) tls_init();
#endif
    signal(SIGPIPE, SIG_IGN);
    signal(SIGALRM, on_alarm);
    /* The hard deadline: setup, warm-up, measurement (or hold) and a margin. */
    double budget = opt.mode == MODE_IDLE    ? 120.0 + opt.hold
                    : opt.mode == MODE_FLOOD ? 600.0 + opt.hold
                                             : opt.warmup + opt.duration + 30.0;
    if (opt.hook != NULL) budget += 120.0; /* a callgrind dump takes seconds */
    alarm((unsigned)budget);

    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die(EXIT_RUN, "epoll_create1");
    conns = calloc((size_t)opt.conns, sizeof *conns);
    if (conns == NULL) die(EXIT_RUN, "calloc");
    for (int i = 0; i < opt.conns; i++) conns[i].fd = -1;

    int rc = opt.mode == MODE_IDLE ? run_idle() : opt.mode == MODE_FLOOD ? run_flood() : run_timed();
    for (int i = 0; i < opt.conns; i++) {
        if (conns[i].state != C_FREE) conn_close(&conns[i]);
    }
    return rc;
}
