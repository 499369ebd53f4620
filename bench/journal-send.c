/* Sends access-log journal entries the way gatehouse does (crates/kit/src/log/access.rs,
 * crates/kit/src/journal.rs): native-protocol datagrams to /run/systemd/journal/socket,
 * 64 per sendmmsg(2), blocking, so it goes as fast as journald takes them. Used by
 * bench/journal-fields.sh, which builds it statically and runs it inside the e2e machine.
 *
 * Usage: journal-send FIELDS PROFILE COUNT MAX_SECONDS
 *   FIELDS   comma-separated, from PRIORITY SYSLOG_IDENTIFIER TARGET MESSAGE HTTP_METHOD
 *            HTTP_PATH HTTP_STATUS UPSTREAM HTTP_HOST HTTP_DURATION_US REMOTE_ADDR (written in
 *            that order, gatehouse's), "all" for every one, or "all-NAME" for all but NAME.
 *            MESSAGE_NOVIA is MESSAGE without gatehouse's " via UPSTREAM" suffix.
 *   PROFILE  real: a mix of paths, clients, hosts, statuses and durations, a third of the
 *            requests proxied (with UPSTREAM); wrk: what bench/deployed.sh's static row logs
 *            (one path, one client, durations of tens of µs).
 * Prints "PID SENT ELAPSED_SECONDS BYTES_SENT" (the pid: journalctl _PID= finds its entries). The value sequence depends only on PROFILE and the entry's
 * index, so every variant sends the same requests. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

enum { BATCH = 64, ENTRY_MAX = 2048 };

static const char *const NAMES[] = {"PRIORITY",    "SYSLOG_IDENTIFIER", "TARGET",
                                    "MESSAGE",     "HTTP_METHOD",       "HTTP_PATH",
                                    "HTTP_STATUS", "UPSTREAM",          "HTTP_HOST",
                                    "HTTP_DURATION_US", "REMOTE_ADDR"};
enum { N_NAMES = sizeof NAMES / sizeof NAMES[0], F_MESSAGE = 3 };

struct request {
    const char *method, *host, *upstream;
    char path[256], remote[48];
    unsigned status, duration_us;
};

static unsigned long long mix(unsigned long long x) { /* splitmix64 */
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static void real_request(unsigned long long i, struct request *r) {
    unsigned long long h = mix(i), g = mix(h);
    unsigned kind = h % 100, pick = (h >> 8) % 100;
    static const char *const hosts[] = {"www.example.com", "example.com", "api.example.com"};
    r->host = hosts[(h >> 16) % 3];
    r->method = pick < 90 ? "GET" : pick < 98 ? "POST" : "HEAD";
    r->upstream = NULL;
    if (kind < 55) { /* static assets: a few hundred files */
        static const char *const ext[] = {"js", "css", "png", "woff2", "svg"};
        snprintf(r->path, sizeof r->path, "/static/%s/%08llx.%s", ext[(g >> 4) % 5],
                 mix(g % 300) & 0xffffffffULL, ext[(g >> 4) % 5]);
    } else if (kind < 80) { /* app API: ids from a large range */
        snprintf(r->path, sizeof r->path, "/api/v1/orders/%llu", g % 200000);
        r->upstream = "unix:/run/app.sock";
    } else { /* pages, some with a query string */
        if ((g >> 20) % 3 == 0)
            snprintf(r->path, sizeof r->path, "/blog/post-%llu?utm_source=news&page=%llu",
                     g % 3000, (g >> 32) % 10);
        else
            snprintf(r->path, sizeof r->path, "/blog/post-%llu", g % 3000);
        r->upstream = "http://127.0.0.1:8001";
    }
    unsigned s = (g >> 40) % 100;
    r->status = s < 84 ? 200 : s < 92 ? 304 : s < 96 ? 404 : s < 98 ? 301 : s < 99 ? 499 : 502;
    /* Durations: static tens to hundreds of µs, proxied up to tens of ms. */
    r->duration_us = r->upstream ? 300 + (unsigned)(mix(g) % 40000) : 20 + (unsigned)(mix(g) % 900);
    unsigned c = (unsigned)(mix(h ^ 0x55) % 3000); /* 3000 clients, some IPv6 */
    if (c % 10 == 0)
        snprintf(r->remote, sizeof r->remote, "2001:db8:%x::%x", c / 256, c % 256 + 1);
    else
        snprintf(r->remote, sizeof r->remote, "198.51.%u.%u", c / 250, c % 250 + 1);
}

static void wrk_request(unsigned long long i, struct request *r) {
    r->method = "GET";
    r->host = "127.0.0.1";
    r->upstream = NULL;
    strcpy(r->path, "/index.html");
    strcpy(r->remote, "127.0.0.1");
    r->status = 200;
    r->duration_us = 20 + (unsigned)(mix(i) % 80);
}

static size_t field(char *out, const char *key, const char *value) {
    return (size_t)sprintf(out, "%s=%s\n", key, value);
}

/* One datagram for request r with the selected fields, in gatehouse's order. */
static size_t entry(char *out, const int *on, int novia, const struct request *r) {
    char num[24], message[512];
    size_t n = 0;
    for (int f = 0; f < N_NAMES; f++) {
        if (!on[f])
            continue;
        const char *v = NULL;
        switch (f) {
        case 0: v = "6"; break;
        case 1: v = "gatehouse"; break;
        case 2: v = "gatehouse::access"; break;
        case 3:
            snprintf(message, sizeof message, "%s %s %u%s%s", r->method, r->path, r->status,
                     r->upstream && !novia ? " via " : "", r->upstream && !novia ? r->upstream : "");
            v = message;
            break;
        case 4: v = r->method; break;
        case 5: v = r->path; break;
        case 6: snprintf(num, sizeof num, "%u", r->status); v = num; break;
        case 7: v = r->upstream; break; /* only proxied requests have one */
        case 8: v = r->host; break;
        case 9: snprintf(num, sizeof num, "%u", r->duration_us); v = num; break;
        case 10: v = r->remote; break;
        }
        if (v)
            n += field(out + n, NAMES[f], v);
    }
    return n;
}

static int parse_fields(const char *spec, int *on, int *novia) {
    char buf[512];
    snprintf(buf, sizeof buf, "%s", spec);
    if (strncmp(buf, "all", 3) == 0) {
        for (int f = 0; f < N_NAMES; f++)
            on[f] = 1;
        if (buf[3] == '\0')
            return 0;
        if (buf[3] != '-')
            return -1;
        for (char *tok = strtok(buf + 4, "-"); tok; tok = strtok(NULL, "-")) {
            int found = 0;
            for (int f = 0; f < N_NAMES; f++)
                if (strcmp(tok, NAMES[f]) == 0)
                    on[f] = 0, found = 1;
            if (strcmp(tok, "VIA") == 0)
                *novia = 1, found = 1;
            if (!found)
                return -1;
        }
        return 0;
    }
    for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
        int found = 0;
        if (strcmp(tok, "MESSAGE_NOVIA") == 0)
            on[F_MESSAGE] = 1, *novia = 1, found = 1;
        for (int f = 0; f < N_NAMES; f++)
            if (strcmp(tok, NAMES[f]) == 0)
                on[f] = 1, found = 1;
        if (!found)
            return -1;
    }
    return 0;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    int on[N_NAMES] = {0}, novia = 0;
    if (argc != 5 || parse_fields(argv[1], on, &novia) != 0 ||
        (strcmp(argv[2], "real") != 0 && strcmp(argv[2], "wrk") != 0)) {
        fprintf(stderr, "usage: journal-send FIELDS real|wrk COUNT MAX_SECONDS\n");
        return 2;
    }
    int real = strcmp(argv[2], "real") == 0;
    unsigned long long count = strtoull(argv[3], NULL, 10);
    double deadline = now() + atof(argv[4]);

    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    /* JOURNAL_SEND_SOCKET: another receiver, to look at the datagrams. */
    const char *path = getenv("JOURNAL_SEND_SOCKET");
    snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path ? path : "/run/systemd/journal/socket");
    static char bufs[BATCH][ENTRY_MAX];
    struct iovec iov[BATCH];
    struct mmsghdr hdr[BATCH];
    if (fd < 0) {
        perror("socket");
        return 1;
    }
    double t0 = now();
    unsigned long long sent = 0, bytes = 0;
    while (sent < count && now() < deadline) {
        unsigned n = 0;
        for (; n < BATCH && sent + n < count; n++) {
            struct request r;
            if (real)
                real_request(sent + n, &r);
            else
                wrk_request(sent + n, &r);
            iov[n] = (struct iovec){bufs[n], entry(bufs[n], on, novia, &r)};
            hdr[n] = (struct mmsghdr){.msg_hdr = {.msg_name = &addr,
                                                  .msg_namelen = sizeof addr,
                                                  .msg_iov = &iov[n],
                                                  .msg_iovlen = 1}};
        }
        unsigned done = 0;
        while (done < n) {
            int k = sendmmsg(fd, hdr + done, n - done, MSG_NOSIGNAL);
            if (k < 0) {
                perror("sendmmsg");
                printf("%d %llu %.3f %llu\n", (int)getpid(), sent + done, now() - t0, bytes);
                return 1;
            }
            for (int j = 0; j < k; j++)
                bytes += iov[done + j].iov_len;
            done += (unsigned)k;
        }
        sent += n;
    }
    printf("%d %llu %.3f %llu\n", (int)getpid(), sent, now() - t0, bytes);
    return 0;
}
