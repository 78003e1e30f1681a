/*
 * portcullis-ctl — the admin command: talks to the Redis the instances share, never to an
 * instance itself, so it works the same with one instance or twenty (docs/redis.md).
 *
 *   portcullis-ctl [-c FILE] [-H host] [-p port] [-s socket] [-u user] [-n db] [-P prefix] CMD …
 *     sessions [user]          list live sessions (all instances)
 *     kick <user|session-id>   end those sessions wherever they are (publishes on P kick)
 *     unlock <user|address>    clear a lock-out and the login-rate bucket
 *     route, drain, undrain    routing overrides and backend drain (docs/redis.md); route show
 *                              <user>: override, affinity and lookups (docs/routing.md)
 *     reload                   the exception: asks the local instance (POST /reload on the
 *                              admin listener of FILE, default /etc/portcullis/portcullis.yaml)
 *                              to reload as SIGHUP does, and reports the result
 *
 * Connection settings come from the `redis:` section of FILE (-c) and then the options; the
 * password from the file or the PORTCULLIS_REDIS_PASSWORD environment variable (never argv,
 * where `ps` would show it). Subcommands are a table: route/drain/reload slot in the same way.
 * A blocking client is right here: this is a short-lived command, not the event loop.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "config.h"
#include "ratelimit.h"
#include "route_explain.h"

struct ctl {
    redisContext *rc;
    const char *prefix;
    bool fold;
    unsigned v4_prefix, v6_prefix;
    const struct config *cfg; /* -c FILE, or NULL */
};

struct ctl_cmd {
    const char *name;
    int min_args, max_args;
    const char *usage;
    int (*run)(struct ctl *c, int argc, char **argv);
};

static redisReply *cmd(struct ctl *c, int argc, const char **argv)
{
    size_t lens[16];
    for (int i = 0; i < argc && i < 16; i++)
        lens[i] = strlen(argv[i]);
    redisReply *r = redisCommandArgv(c->rc, argc, argv, lens);
    if (!r) {
        fprintf(stderr, "portcullis-ctl: redis: %s\n", c->rc->errstr);
        exit(2);
    }
    if (r->type == REDIS_REPLY_ERROR) {
        fprintf(stderr, "portcullis-ctl: redis: %s\n", r->str);
        freeReplyObject(r);
        exit(2);
    }
    return r;
}

static const char *field(const redisReply *h, const char *name)
{
    for (size_t i = 0; i + 1 < h->elements; i += 2)
        if (h->element[i]->type == REDIS_REPLY_STRING && strcmp(h->element[i]->str, name) == 0)
            return h->element[i + 1]->type == REDIS_REPLY_STRING ? h->element[i + 1]->str : "-";
    return "-";
}

static int run_sessions(struct ctl *c, int argc, char **argv)
{
    char match[RL_KEY_MAX], tag[3 * RL_USER_MAX + 1];
    if (argc > 0) {
        rl_user_key(argv[0], c->fold, tag, sizeof tag);
        if (!rl_key(match, sizeof match, c->prefix, "sess", tag, ":*"))
            return 1;
    } else {
        snprintf(match, sizeof match, "%ssess:*", c->prefix);
    }
    printf("%-40s %-20s %-24s %-12s %-12s %-5s %-10s %s\n", "ID", "USER", "CLIENT", "BACKEND",
           "INSTANCE", "PROTO", "STARTED", "BYTES");
    char cursor[32] = "0";
    unsigned n = 0;
    do {
        redisReply *r = cmd(c, 6, (const char *[]){"SCAN", cursor, "MATCH", match, "COUNT", "500"});
        if (r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
            freeReplyObject(r);
            return 2;
        }
        snprintf(cursor, sizeof cursor, "%s", r->element[0]->str);
        const redisReply *keys = r->element[1];
        for (size_t i = 0; i < keys->elements; i++) {
            redisReply *h = cmd(c, 2, (const char *[]){"HGETALL", keys->element[i]->str});
            if (h->type == REDIS_REPLY_ARRAY && h->elements > 0) {
                printf("%-40s %-20s %-24s %-12s %-12s %-5s %-10s %s\n", field(h, "id"),
                       field(h, "user"), field(h, "client"), field(h, "backend"),
                       field(h, "instance"), field(h, "protocol"), field(h, "started"),
                       field(h, "bytes"));
                n++;
            }
            freeReplyObject(h);
        }
        freeReplyObject(r);
    } while (strcmp(cursor, "0") != 0);
    fprintf(stderr, "%u session(s)\n", n);
    return 0;
}

static int run_kick(struct ctl *c, int argc, char **argv)
{
    (void)argc;
    char chan[128];
    snprintf(chan, sizeof chan, "%skick", c->prefix);
    redisReply *r = cmd(c, 3, (const char *[]){"PUBLISH", chan, argv[0]});
    printf("kick %s: delivered to %lld worker connection(s)\n", argv[0], r->integer);
    int rc = r->integer > 0 ? 0 : 1;
    freeReplyObject(r);
    return rc;
}

/* DEL every key matching `prefix` + "*" (the prefix's glob characters escaped). */
static long long del_matching(struct ctl *c, const char *prefix)
{
    char match[2 * RL_KEY_MAX + 2], cursor[32] = "0";
    size_t o = 0;
    for (const char *q = prefix; *q && o + 3 < sizeof match; q++) {
        if (strchr("*?[]\\", *q))
            match[o++] = '\\';
        match[o++] = *q;
    }
    match[o++] = '*';
    match[o] = '\0';
    long long n = 0;
    do {
        redisReply *r = cmd(c, 6, (const char *[]){"SCAN", cursor, "MATCH", match, "COUNT", "500"});
        if (r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
            freeReplyObject(r);
            return n;
        }
        snprintf(cursor, sizeof cursor, "%s", r->element[0]->str);
        const redisReply *keys = r->element[1];
        for (size_t i = 0; i < keys->elements; i++) {
            redisReply *d = cmd(c, 2, (const char *[]){"DEL", keys->element[i]->str});
            n += d->type == REDIS_REPLY_INTEGER ? d->integer : 0;
            freeReplyObject(d);
        }
        freeReplyObject(r);
    } while (strcmp(cursor, "0") != 0);
    return n;
}

static int run_unlock(struct ctl *c, int argc, char **argv)
{
    (void)argc;
    char tag[3 * RL_USER_MAX + 1], kf[RL_KEY_MAX], kb[RL_KEY_MAX];
    bool addr = rl_addr_key_text(argv[0], c->v4_prefix, c->v6_prefix, tag, sizeof tag);
    if (!addr)
        rl_user_key(argv[0], c->fold, tag, sizeof tag);
    if (!rl_key(kf, sizeof kf, c->prefix, "fail", tag, "") ||
        !rl_key(kb, sizeof kb, c->prefix, "rl", tag, ":login"))
        return 1;
    redisReply *r = cmd(c, 3, (const char *[]){"DEL", kf, kb});
    long long n = r->integer;
    freeReplyObject(r);
    if (!addr) {
        /* the user's (user, network) records and their buckets: fail:{U}:A, rl:{U}:login:A */
        char pf[RL_KEY_MAX + 2], pb[RL_KEY_MAX + 2];
        snprintf(pf, sizeof pf, "%s:", kf);
        snprintf(pb, sizeof pb, "%s:", kb);
        n += del_matching(c, pf) + del_matching(c, pb);
    }
    printf("unlock %s %s: %lld key(s) removed\n", addr ? "address" : "user", tag, n);
    return 0;
}

/* route show <user> (issue 17): the pin, the affinity, and what the routing lookups of -c FILE
 * say (route_explain.c). */
static int run_route_show(struct ctl *c, const char *user)
{
    char tag[3 * RL_USER_MAX + 1], key[RL_KEY_MAX], akey[RL_KEY_MAX];
    rl_user_key(user, c->fold, tag, sizeof tag);
    if (!rl_key(key, sizeof key, c->prefix, "route", tag, "") ||
        !rl_key(akey, sizeof akey, c->prefix, "aff", tag, ""))
        return 1;
    redisReply *r = cmd(c, 2, (const char *[]){"GET", key});
    redisReply *a = cmd(c, 2, (const char *[]){"GET", akey});
    const char *pin = r->type == REDIS_REPLY_STRING ? r->str : NULL;
    printf("override: %s\naffinity: %s\n", pin ? pin : "-",
           a->type == REDIS_REPLY_STRING ? a->str : "-");
    if (c->cfg)
        route_explain(stdout, c->cfg, user, pin);
    else
        printf("lookups: give -c FILE to see them\n");
    freeReplyObject(r);
    freeReplyObject(a);
    return 0;
}

/* route <user> <backend|server>: pin the user (no TTL, no failover); route <user> -: unpin;
 * route <user>: show the pin. Every instance reads it at the user's next login. */
static int run_route(struct ctl *c, int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[0], "show") == 0)
        return run_route_show(c, argv[1]);
    char tag[3 * RL_USER_MAX + 1], key[RL_KEY_MAX];
    rl_user_key(argv[0], c->fold, tag, sizeof tag);
    if (!rl_key(key, sizeof key, c->prefix, "route", tag, ""))
        return 1;
    redisReply *r;
    if (argc == 1) {
        r = cmd(c, 2, (const char *[]){"GET", key});
        printf("route %s: %s\n", argv[0], r->type == REDIS_REPLY_STRING ? r->str : "(hash)");
    } else if (strcmp(argv[1], "-") == 0) {
        r = cmd(c, 2, (const char *[]){"DEL", key});
        printf("route %s: cleared\n", argv[0]);
    } else {
        r = cmd(c, 3, (const char *[]){"SET", key, argv[1]});
        printf("route %s: %s (from the next login; live sessions stay where they are)\n", argv[0],
               argv[1]);
    }
    freeReplyObject(r);
    return 0;
}

/* drain <backend> / undrain <backend>: no new sessions on it, on every instance within 5 s;
 * live sessions continue. drain with no argument lists the drained backends. */
static int run_drain_set(struct ctl *c, int argc, char **argv, bool on)
{
    char key[RL_KEY_MAX];
    snprintf(key, sizeof key, "%sdrained", c->prefix);
    if (argc == 0) {
        redisReply *r = cmd(c, 2, (const char *[]){"SMEMBERS", key});
        for (size_t i = 0; i < r->elements; i++)
            printf("%s\n", r->element[i]->str);
        freeReplyObject(r);
        return 0;
    }
    redisReply *r = cmd(c, 3, (const char *[]){on ? "SADD" : "SREM", key, argv[0]});
    printf("%s %s\n", on ? "drained" : "undrained", argv[0]);
    freeReplyObject(r);
    return 0;
}

static int run_drain(struct ctl *c, int argc, char **argv)
{
    return run_drain_set(c, argc, argv, true);
}

static int run_undrain(struct ctl *c, int argc, char **argv)
{
    return run_drain_set(c, argc, argv, false);
}

static const struct ctl_cmd commands[] = {
    {"sessions", 0, 1, "sessions [user]", run_sessions},
    {"kick", 1, 1, "kick <user|session-id>", run_kick},
    {"unlock", 1, 1, "unlock <user|address>", run_unlock},
    {"route", 1, 2, "route <user> [<backend|server> | -] | route show <user>", run_route},
    {"drain", 0, 1, "drain [<backend>]", run_drain},
    {"undrain", 1, 1, "undrain <backend>", run_undrain},
};

#define DEFAULT_CONFIG "/etc/portcullis/portcullis.yaml"

/* reload: one HTTP request to the instance's admin listener; exit 0 only on "200 reloaded". */
static int run_reload(const struct config *cfg)
{
    if (!cfg->admin.enabled) {
        fprintf(stderr, "portcullis-ctl: admin listener disabled in the configuration: use "
                        "SIGHUP (systemctl reload portcullis)\n");
        return 2;
    }
    int fd = socket(cfg->admin.addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct timeval tv = {30, 0}; /* a reload builds TLS contexts: give it time */
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) < 0 ||
        connect(fd, (const struct sockaddr *)&cfg->admin.addr, cfg->admin.addrlen) < 0) {
        fprintf(stderr, "portcullis-ctl: cannot reach the admin listener %s: %s\n", cfg->admin.bind,
                strerror(errno));
        if (fd >= 0)
            close(fd);
        return 2;
    }
    static const char req[] = "POST /reload HTTP/1.0\r\nHost: portcullis\r\n"
                              "Content-Length: 0\r\n\r\n";
    char resp[2048];
    size_t n = 0;
    ssize_t k = send(fd, req, sizeof req - 1, MSG_NOSIGNAL);
    while (k >= 0 && n < sizeof resp - 1 && (k = recv(fd, resp + n, sizeof resp - 1 - n, 0)) > 0)
        n += (size_t)k;
    close(fd);
    resp[n] = '\0';
    const char *body = strstr(resp, "\r\n\r\n");
    body = body ? body + 4 : "";
    if (strncmp(resp, "HTTP/1.1 200 ", 13) == 0) {
        fputs(body, stdout);
        return 0;
    }
    fprintf(stderr, "portcullis-ctl: %s", n ? (*body ? body : resp) : "no answer\n");
    return 1;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: portcullis-ctl [-c FILE] [-H host] [-p port] [-s socket] [-u user] "
               "[-n db] [-P prefix] COMMAND [ARGS]\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %s\n", commands[i].usage);
    fprintf(f, "  reload                   (the local instance, via admin.bind of FILE, "
               "default " DEFAULT_CONFIG ")\n");
    fprintf(f, "password: redis.password in FILE or $PORTCULLIS_REDIS_PASSWORD\n");
}

int main(int argc, char **argv)
{
    const char *file = NULL, *host = NULL, *sock = NULL, *user = NULL, *prefix = NULL;
    int port = 0, db = -1, opt;
    while ((opt = getopt(argc, argv, "c:H:p:s:u:n:P:h")) != -1) {
        switch (opt) {
        case 'c':
            file = optarg;
            break;
        case 'H':
            host = optarg;
            break;
        case 'p':
            port = atoi(optarg);
            break;
        case 's':
            sock = optarg;
            break;
        case 'u':
            user = optarg;
            break;
        case 'n':
            db = atoi(optarg);
            break;
        case 'P':
            prefix = optarg;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind >= argc) {
        usage(stderr);
        return 2;
    }
    if (strcmp(argv[optind], "reload") == 0) {
        if (argc - optind != 1) {
            usage(stderr);
            return 2;
        }
        char *err = NULL;
        struct config *cfg = cfg_load(file ? file : DEFAULT_CONFIG, &err);
        if (!cfg) {
            fprintf(stderr, "portcullis-ctl: %s\n", err ? err : "cannot load configuration");
            free(err);
            return 2;
        }
        int rc = run_reload(cfg);
        cfg_unref(&cfg);
        return rc;
    }
    const struct ctl_cmd *cc = NULL;
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(argv[optind], commands[i].name) == 0)
            cc = &commands[i];
    int nargs = argc - optind - 1;
    if (!cc || nargs < cc->min_args || nargs > cc->max_args) {
        usage(stderr);
        return 2;
    }
    struct config *cfg = NULL;
    if (file) {
        char *err = NULL;
        cfg = cfg_load(file, &err);
        if (!cfg) {
            fprintf(stderr, "portcullis-ctl: %s\n", err ? err : "cannot load configuration");
            free(err);
            return 2;
        }
    }
    const struct cfg_redis *r = cfg ? &cfg->redis : NULL;
    struct ctl c = {
        .prefix = prefix ? prefix
                  : r    ? r->prefix
                         : "pc:",
        .fold = cfg ? cfg->policy.user_case_insensitive : true,
        .v4_prefix = cfg ? cfg->policy.ipv4_prefix : 32,
        .v6_prefix = cfg ? cfg->policy.ipv6_prefix : 64,
        .cfg = cfg,
    };
    const char *password = getenv("PORTCULLIS_REDIS_PASSWORD");
    if (!password && r)
        password = r->password;
    if (!user && r)
        user = r->username;
    if (!sock && !host && r)
        sock = r->socket;
    if (!host)
        host = r && r->addr ? r->addr : "127.0.0.1";
    if (!port)
        port = r ? r->port : 6379;
    if (db < 0)
        db = r ? (int)r->db : 0;
    struct timeval tv = {2, 0};
    c.rc = sock ? redisConnectUnixWithTimeout(sock, tv) : redisConnectWithTimeout(host, port, tv);
    if (!c.rc || c.rc->err) {
        fprintf(stderr, "portcullis-ctl: cannot connect to redis: %s\n",
                c.rc ? c.rc->errstr : "out of memory");
        return 2;
    }
    redisSetTimeout(c.rc, tv);
    if (password) {
        redisReply *a = user ? cmd(&c, 3, (const char *[]){"AUTH", user, password})
                             : cmd(&c, 2, (const char *[]){"AUTH", password});
        freeReplyObject(a);
    }
    if (db > 0) {
        char d[16];
        snprintf(d, sizeof d, "%d", db);
        freeReplyObject(cmd(&c, 2, (const char *[]){"SELECT", d}));
    }
    int rc = cc->run(&c, nargs, argv + optind + 1);
    redisFree(c.rc);
    cfg_unref(&cfg);
    return rc;
}
