/*
 * portcullis-ctl — the admin command (portcullis-ctl(8), docs/man/portcullis-ctl.8.md). Most
 * commands talk to the Redis the instances share, never to an instance itself, so they work the
 * same with one instance or twenty (docs/redis.md):
 *     sessions [USER]          list live sessions (all instances); --json for scripts
 *     kick USER|SESSION-ID     end those sessions wherever they are (publishes on P kick)
 *     unlock USER|ADDRESS      clear a lock-out and the login-rate bucket
 *     route, drain, undrain    routing overrides and backend drain (docs/redis.md); route show
 *                              USER: override, affinity, shared cache and routing lookups
 *                              (docs/routing.md); route flush-cache [USER]: shared answers
 * Two are the exception and ask the local instance (POST on the admin listener of FILE):
 *     reload                   reload as SIGHUP does, and report the result
 *     reload-signatures        reload the virus signatures only (freshclam's hook)
 *
 * Arguments are checked before anything is changed: a backend against FILE's pool, a kick
 * target against the registry; an unknown one exits 1 with the reason on stderr, so a typo never
 * looks like success. FILE (-c, default /etc/portcullis/portcullis.yaml) is always read: it
 * names the Redis (options override), the key prefix and the pool. The password comes from the
 * file or the PORTCULLIS_REDIS_PASSWORD environment variable (never argv, where `ps` would show
 * it). A blocking client is right here: this is a short-lived command, not the event loop.
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
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "config.h"
#include "ratelimit.h"
#include "route_explain.h"
#include "route_shared.h"
#include "version.h"

struct ctl {
    redisContext *rc; /* NULL for the commands that talk to the admin listener */
    struct config *cfg;
    const char *cfg_path;
    const char *prefix;
    bool fold;
    unsigned v4_prefix, v6_prefix;
    bool json;         /* --json: listings as JSON */
    int timeout;       /* seconds an admin request may take */
    const char *admin; /* --admin ADDRESS: the admin listener, without reading the file */
};

struct ctl_cmd {
    const char *name;
    int min_args, max_args;
    bool redis; /* talks to Redis (else to the local admin listener) */
    const char *usage, *help;
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

/* `s` as a JSON string (quotes included); bytes >= 0x80 pass through (the registry holds what
 * the client sent: UTF-8 in practice), control bytes are escaped. */
static void json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            fprintf(f, "\\%c", *p);
        else if (*p < 0x20 || *p == 0x7f)
            fprintf(f, "\\u%04x", *p);
        else
            fputc(*p, f);
    }
    fputc('"', f);
}

/* A registry field holding a decimal number: -1 when absent or not one. */
static long long field_num(const redisReply *h, const char *name)
{
    const char *v = field(h, name);
    char *end;
    errno = 0;
    long long n = strtoll(v, &end, 10);
    return errno || end == v || *end || n < 0 ? -1 : n;
}

/* Unix time → "2026-12-05T21:14:03Z" (ISO 8601, UTC); "" when there is none. */
static void iso_utc(char out[32], long long epoch)
{
    struct tm tm;
    time_t t = (time_t)epoch;
    out[0] = '\0';
    if (epoch >= 0 && gmtime_r(&t, &tm))
        strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static long long age_of(long long epoch, time_t now)
{
    return epoch >= 0 && (long long)now > epoch ? (long long)now - epoch : 0;
}

/* "2026-12-05T21:14:03Z (3h07m)": when (UTC) and how long ago, for STARTED. */
static void human_time(char *out, size_t cap, long long epoch, time_t now)
{
    char iso[32], age[32];
    iso_utc(iso, epoch);
    if (!iso[0]) {
        snprintf(out, cap, "-");
        return;
    }
    long long a = age_of(epoch, now);
    if (a < 60)
        snprintf(age, sizeof age, "%llds", a);
    else if (a < 3600)
        snprintf(age, sizeof age, "%lldm%02llds", a / 60, a % 60);
    else if (a < 86400)
        snprintf(age, sizeof age, "%lldh%02lldm", a / 3600, a % 3600 / 60);
    else
        snprintf(age, sizeof age, "%lldd%02lldh", a / 86400, a % 86400 / 3600);
    snprintf(out, cap, "%s (%s)", iso, age);
}

static void print_session(const struct ctl *c, const redisReply *h, time_t now, unsigned n)
{
    long long started = field_num(h, "started"), bytes = field_num(h, "bytes");
    if (c->json) {
        static const char *const strs[] = {"id",      "user",     "client",
                                           "backend", "instance", "protocol"};
        printf("%s\n  {", n ? "," : "");
        for (size_t i = 0; i < sizeof strs / sizeof strs[0]; i++) {
            printf("%s\"%s\": ", i ? ", " : "", strs[i]);
            json_str(stdout, field(h, strs[i]));
        }
        char iso[32];
        iso_utc(iso, started);
        printf(", \"started\": %lld, \"started_iso\": \"%s\", \"age_seconds\": %lld, "
               "\"bytes\": %lld}",
               started, iso, age_of(started, now), bytes);
        return;
    }
    char when[80];
    human_time(when, sizeof when, started, now);
    printf("%-28s %-20s %-24s %-12s %-12s %-5s %-32s %s\n", field(h, "id"), field(h, "user"),
           field(h, "client"), field(h, "backend"), field(h, "instance"), field(h, "protocol"),
           when, field(h, "bytes"));
}

/* Every registry hash whose key matches `match` (a SCAN pattern): `each` per hash, when given.
 * Returns how many there were. */
static unsigned scan_sessions(struct ctl *c, const char *match, time_t now,
                              void (*each)(const struct ctl *, const redisReply *, time_t,
                                           unsigned))
{
    char cursor[32] = "0";
    unsigned n = 0;
    do {
        redisReply *r = cmd(c, 6, (const char *[]){"SCAN", cursor, "MATCH", match, "COUNT", "500"});
        if (r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
            freeReplyObject(r);
            return n;
        }
        snprintf(cursor, sizeof cursor, "%s", r->element[0]->str);
        const redisReply *keys = r->element[1];
        for (size_t i = 0; i < keys->elements; i++) {
            redisReply *h = cmd(c, 2, (const char *[]){"HGETALL", keys->element[i]->str});
            if (h->type == REDIS_REPLY_ARRAY && h->elements > 0) {
                if (each)
                    each(c, h, now, n);
                n++;
            }
            freeReplyObject(h);
        }
        freeReplyObject(r);
    } while (strcmp(cursor, "0") != 0);
    return n;
}

/* `s` with the SCAN glob characters escaped, into out[cap] (false if it does not fit). */
static bool glob_escape(char *out, size_t cap, const char *s)
{
    size_t o = 0;
    for (; *s; s++) {
        if (o + 3 > cap)
            return false;
        if (strchr("*?[]\\", *s))
            out[o++] = '\\';
        out[o++] = *s;
    }
    out[o] = '\0';
    return true;
}

/* SCAN patterns for the registry: every session (user NULL) or those of one user. */
static bool sessions_match(const struct ctl *c, const char *user, char *out, size_t cap)
{
    char pfx[2 * RL_KEY_MAX], tag[3 * RL_USER_MAX + 1], etag[6 * RL_USER_MAX + 2];
    if (!glob_escape(pfx, sizeof pfx, c->prefix))
        return false;
    if (!user)
        return snprintf(out, cap, "%ssess:*", pfx) < (int)cap;
    rl_user_key(user, c->fold, tag, sizeof tag);
    return glob_escape(etag, sizeof etag, tag) &&
           snprintf(out, cap, "%ssess:{%s}:*", pfx, etag) < (int)cap;
}

static int run_sessions(struct ctl *c, int argc, char **argv)
{
    char match[4 * RL_KEY_MAX];
    if (!sessions_match(c, argc > 0 ? argv[0] : NULL, match, sizeof match))
        return 1;
    if (c->json)
        printf("[");
    else
        printf("%-28s %-20s %-24s %-12s %-12s %-5s %-32s %s\n", "ID", "USER", "CLIENT", "BACKEND",
               "INSTANCE", "PROTO", "STARTED (UTC, AGE)", "BYTES");
    unsigned n = scan_sessions(c, match, time(NULL), print_session);
    if (c->json)
        printf("%s]\n", n ? "\n" : "");
    else
        fprintf(stderr, "%u session(s)\n", n);
    return 0;
}

/* How many live sessions `target` names: a session id (the log's sess=) or a user. */
static unsigned kick_targets(struct ctl *c, const char *target)
{
    char match[4 * RL_KEY_MAX], pfx[2 * RL_KEY_MAX], sid[2 * RL_USER_MAX + 2];
    unsigned n = 0;
    if (strlen(target) <= RL_USER_MAX && glob_escape(pfx, sizeof pfx, c->prefix) &&
        glob_escape(sid, sizeof sid, target) &&
        snprintf(match, sizeof match, "%ssess:{*}:%s", pfx, sid) < (int)sizeof match)
        n = scan_sessions(c, match, 0, NULL);
    if (n == 0 && sessions_match(c, target, match, sizeof match))
        n = scan_sessions(c, match, 0, NULL);
    return n;
}

static int run_kick(struct ctl *c, int argc, char **argv)
{
    (void)argc;
    unsigned n = kick_targets(c, argv[0]);
    if (n == 0) {
        fprintf(stderr,
                "portcullis-ctl: kick: no live session of a user or with a session id '%s' "
                "(see portcullis-ctl sessions)\n",
                argv[0]);
        return 1;
    }
    char chan[128];
    snprintf(chan, sizeof chan, "%skick", c->prefix);
    redisReply *r = cmd(c, 3, (const char *[]){"PUBLISH", chan, argv[0]});
    long long heard = r->integer;
    freeReplyObject(r);
    if (heard <= 0) {
        fprintf(stderr,
                "portcullis-ctl: kick %s: %u registered session(s) but no instance is "
                "listening on %s\n",
                argv[0], n, chan);
        return 1;
    }
    printf("kick %s: %u session(s); delivered to %lld worker connection(s)\n", argv[0], n, heard);
    return 0;
}

/* DEL every key matching `prefix` + "*" (the prefix's glob characters escaped). */
static long long del_matching(struct ctl *c, const char *prefix)
{
    char match[2 * RL_KEY_MAX + 2], cursor[32] = "0";
    if (!glob_escape(match, sizeof match - 1, prefix))
        return 0;
    strcat(match, "*");
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

/* Is `name` a backend of the configuration (by name, or with servers also by server)? */
static bool in_pool(const struct config *cfg, const char *name, bool servers)
{
    for (size_t i = 0; i < cfg->nbackends; i++) {
        const struct cfg_backend *b = &cfg->backends[i];
        if (strcmp(b->name, name) == 0 || (servers && b->server && strcmp(b->server, name) == 0))
            return true;
    }
    return false;
}

/* "portcullis-ctl: WHAT 'name' is not a backend of FILE (backends: a, b, c)" on stderr. */
static int not_in_pool(const struct ctl *c, const char *what, const char *name)
{
    fprintf(stderr, "portcullis-ctl: %s: '%s' is not a backend of %s (backends:", what, name,
            c->cfg_path);
    for (size_t i = 0; i < c->cfg->nbackends; i++)
        fprintf(stderr, "%s %s", i ? "," : "", c->cfg->backends[i].name);
    fprintf(stderr, ")\n");
    return 1;
}

/* route <user> <backend|server>: pin the user (no TTL, no failover); route <user> -: unpin;
 * route <user>: show the pin. Every instance reads it at the user's next login. The name is
 * checked against this configuration's pool: an instance ignores a route to a backend it does
 * not have (event=route_ignored reason=not_in_pool), so accepting one would only hide a typo. */
/* The user's entry in the shared routing cache (route_shared.h) under FILE's lookups: what a
 * login whose worker cache misses would take, and for how long. */
static void show_shared(struct ctl *c, const char *user)
{
    const struct cfg_routing *r = &c->cfg->routing;
    char tag[ROUTE_SHARED_TAG_MAX], suffix[ROUTE_SHARED_SUFFIX_MAX], key[RL_KEY_MAX];
    if (r->nlookups == 0)
        return;
    if (!r->shared_cache) {
        printf("shared cache: off (routing.shared_cache: false)\n");
        return;
    }
    route_shared_suffix(c->cfg, suffix);
    if (!route_shared_tag(c->cfg, user, tag) ||
        !rl_key(key, sizeof key, c->prefix, ROUTE_SHARED_KIND, tag, suffix)) {
        printf("shared cache: - (user name too long to be shared)\n");
        return;
    }
    redisReply *v = cmd(c, 2, (const char *[]){"GET", key});
    redisReply *t = cmd(c, 2, (const char *[]){"PTTL", key});
    struct route_shared_entry e;
    long long ttl = t->type == REDIS_REPLY_INTEGER ? t->integer : -2;
    if (v->type != REDIS_REPLY_STRING) {
        printf("shared cache: - (key %s)\n", key);
    } else if (!route_shared_decode(v->str, v->len, &e)) {
        printf("shared cache: unreadable entry (ignored by the instances; key %s)\n", key);
    } else if (e.status == ROUTE_FOUND) {
        printf("shared cache: found backend %s (lookup %s, %s), expires in %.1fs (key %s)\n",
               e.text, e.source, e.target.pool ? "pool entry" : "dynamic backend",
               (double)ttl / 1000., key);
    } else {
        printf("shared cache: not found (routing.unknown applies), expires in %.1fs (key %s)\n",
               (double)ttl / 1000., key);
    }
    if (v->type == REDIS_REPLY_STRING)
        printf("  (every instance takes this answer instead of asking the first cacheable lookup "
               "and those after it, until it expires)\n");
    freeReplyObject(v);
    freeReplyObject(t);
}

/* route show USER (issue 17): the pin, the affinity, the shared cache and what the routing
 * lookups of FILE say (route_explain.c). */
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
    if (!pin)
        show_shared(c, user);
    route_explain(stdout, c->cfg, user, pin);
    freeReplyObject(r);
    freeReplyObject(a);
    return 0;
}

/* route flush-cache [USER]: delete shared routing answers (route_shared.h). With USER, the
 * entry under FILE's lookups; without, every `P rt:` entry of every configuration (SCAN +
 * UNLINK, in batches: a blocking walk is right for an admin command, and UNLINK frees off
 * Redis' main thread). Worker caches keep their copies until routing.cache_ttl. */
static int run_route_flush(struct ctl *c, const char *user)
{
    if (user) {
        char tag[ROUTE_SHARED_TAG_MAX], suffix[ROUTE_SHARED_SUFFIX_MAX], key[RL_KEY_MAX];
        route_shared_suffix(c->cfg, suffix);
        if (!route_shared_tag(c->cfg, user, tag) ||
            !rl_key(key, sizeof key, c->prefix, ROUTE_SHARED_KIND, tag, suffix)) {
            fprintf(stderr, "portcullis-ctl: route flush-cache: user name too long\n");
            return 1;
        }
        redisReply *r = cmd(c, 2, (const char *[]){"UNLINK", key});
        printf("route flush-cache %s: %lld entry deleted\n", user,
               r->type == REDIS_REPLY_INTEGER ? r->integer : 0);
        freeReplyObject(r);
        return 0;
    }
    /* The prefix is literal: escape glob characters for MATCH. */
    char pat[RL_KEY_MAX], *o = pat;
    for (const char *p = c->prefix; *p && o < pat + sizeof pat - 16; p++) {
        if (strchr("*?[]\\", *p))
            *o++ = '\\';
        *o++ = *p;
    }
    snprintf(o, (size_t)(pat + sizeof pat - o), "%s:{*", ROUTE_SHARED_KIND);
    char cursor[32] = "0";
    long long deleted = 0;
    do {
        redisReply *r = cmd(c, 6, (const char *[]){"SCAN", cursor, "MATCH", pat, "COUNT", "1000"});
        if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
            r->element[0]->type != REDIS_REPLY_STRING) {
            freeReplyObject(r);
            fprintf(stderr, "portcullis-ctl: redis: unexpected SCAN reply\n");
            return 2;
        }
        snprintf(cursor, sizeof cursor, "%s", r->element[0]->str);
        const redisReply *keys = r->element[1];
        if (keys->elements) {
            size_t n = keys->elements + 1;
            const char **argv = calloc(n, sizeof *argv);
            size_t *lens = calloc(n, sizeof *lens);
            if (!argv || !lens) {
                fprintf(stderr, "portcullis-ctl: out of memory\n");
                exit(2);
            }
            argv[0] = "UNLINK";
            lens[0] = 6;
            for (size_t i = 0; i < keys->elements; i++) {
                argv[i + 1] = keys->element[i]->str;
                lens[i + 1] = keys->element[i]->len;
            }
            redisReply *d = redisCommandArgv(c->rc, (int)n, argv, lens);
            free(argv);
            free(lens);
            if (!d || d->type == REDIS_REPLY_ERROR) {
                fprintf(stderr, "portcullis-ctl: redis: %s\n", d ? d->str : c->rc->errstr);
                exit(2);
            }
            deleted += d->type == REDIS_REPLY_INTEGER ? d->integer : 0;
            freeReplyObject(d);
        }
        freeReplyObject(r);
    } while (strcmp(cursor, "0") != 0);
    printf("route flush-cache: %lld entries deleted\n", deleted);
    return 0;
}

static int run_route(struct ctl *c, int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[0], "show") == 0)
        return run_route_show(c, argv[1]);
    if (strcmp(argv[0], "flush-cache") == 0)
        return run_route_flush(c, argc == 2 ? argv[1] : NULL);
    char tag[3 * RL_USER_MAX + 1], key[RL_KEY_MAX];
    rl_user_key(argv[0], c->fold, tag, sizeof tag);
    if (!rl_key(key, sizeof key, c->prefix, "route", tag, ""))
        return 1;
    redisReply *r;
    if (argc == 1) {
        r = cmd(c, 2, (const char *[]){"GET", key});
        printf("route %s: %s\n", argv[0], r->type == REDIS_REPLY_STRING ? r->str : "(none)");
    } else if (strcmp(argv[1], "-") == 0) {
        r = cmd(c, 2, (const char *[]){"DEL", key});
        printf("route %s: cleared\n", argv[0]);
    } else {
        if (!in_pool(c->cfg, argv[1], true))
            return not_in_pool(c, "route", argv[1]);
        r = cmd(c, 3, (const char *[]){"SET", key, argv[1]});
        printf("route %s: %s (from the next login; live sessions stay where they are)\n", argv[0],
               argv[1]);
    }
    freeReplyObject(r);
    return 0;
}

/* drain <backend> / undrain <backend>: no new sessions on it, on every instance within 5 s;
 * live sessions continue. drain with no argument lists the drained backends. A name must be a
 * backend of the configuration; undrain also takes any name in the drained set (a backend
 * since removed from the file must stay removable). */
static int run_drain_set(struct ctl *c, int argc, char **argv, bool on)
{
    char key[RL_KEY_MAX];
    snprintf(key, sizeof key, "%sdrained", c->prefix);
    if (argc == 0) {
        redisReply *r = cmd(c, 2, (const char *[]){"SMEMBERS", key});
        if (c->json)
            printf("[");
        for (size_t i = 0; i < r->elements; i++) {
            if (!c->json) {
                printf("%s\n", r->element[i]->str);
                continue;
            }
            printf("%s", i ? ", " : "");
            json_str(stdout, r->element[i]->str);
        }
        if (c->json)
            printf("]\n");
        freeReplyObject(r);
        return 0;
    }
    if (!in_pool(c->cfg, argv[0], false)) {
        bool member = false;
        if (!on) {
            redisReply *m = cmd(c, 3, (const char *[]){"SISMEMBER", key, argv[0]});
            member = m->type == REDIS_REPLY_INTEGER && m->integer == 1;
            freeReplyObject(m);
        }
        if (!member)
            return not_in_pool(c, on ? "drain" : "undrain", argv[0]);
    }
    redisReply *r = cmd(c, 3, (const char *[]){on ? "SADD" : "SREM", key, argv[0]});
    printf("%s %s%s\n", on ? "drained" : "undrained", argv[0],
           r->type == REDIS_REPLY_INTEGER && r->integer == 0 ? " (already)" : "");
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

/* A decimal option value in [lo, hi], or -1 (atoi took "abc" as 0). */
static int opt_int(const char *v, int lo, int hi)
{
    char *end;
    long n = strtol(v, &end, 10);
    return end != v && !*end && n >= lo && n <= hi ? (int)n : -1;
}

/* "127.0.0.1:9190" or "[::1]:9190" (numeric, as admin.bind) into *ss; false if it is not. */
static bool parse_admin_addr(const char *text, struct sockaddr_storage *ss, socklen_t *len)
{
    char host[INET6_ADDRSTRLEN + 2];
    const char *colon = strrchr(text, ':');
    int port = colon ? opt_int(colon + 1, 1, 65535) : -1;
    size_t hl = colon ? (size_t)(colon - text) : 0;
    if (port < 0 || hl == 0 || hl >= sizeof host)
        return false;
    memcpy(host, text, hl);
    host[hl] = '\0';
    memset(ss, 0, sizeof *ss);
    struct sockaddr_in *v4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
        *len = sizeof *v4;
        return true;
    }
    if (hl > 2 && host[0] == '[' && host[hl - 1] == ']') {
        host[hl - 1] = '\0';
        if (inet_pton(AF_INET6, host + 1, &v6->sin6_addr) == 1) {
            v6->sin6_family = AF_INET6;
            v6->sin6_port = htons((uint16_t)port);
            *len = sizeof *v6;
            return true;
        }
    }
    return false;
}

/* One HTTP request to the local instance's admin listener (--admin, else admin.bind of the
 * configuration): exit 0 only on 200, with the answer's body on stdout; otherwise the body on
 * stderr, 1. */
static int admin_post(const struct ctl *c, const char *path)
{
    struct sockaddr_storage ss;
    socklen_t sslen = 0;
    const char *bind = c->admin;
    if (bind) {
        if (!parse_admin_addr(bind, &ss, &sslen)) {
            fprintf(stderr,
                    "portcullis-ctl: --admin: '%s' is not ADDRESS:PORT (numeric, as "
                    "admin.bind)\n",
                    bind);
            return 2;
        }
    } else if (!c->cfg->admin.enabled) {
        fprintf(stderr,
                "portcullis-ctl: the admin listener is disabled in %s (admin.enabled): use "
                "SIGHUP (systemctl reload portcullis)\n",
                c->cfg_path);
        return 2;
    } else {
        bind = c->cfg->admin.bind;
        ss = c->cfg->admin.addr;
        sslen = c->cfg->admin.addrlen;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct timeval tv = {c->timeout, 0};
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) < 0 ||
        connect(fd, (const struct sockaddr *)&ss, sslen) < 0) {
        fprintf(stderr, "portcullis-ctl: cannot reach the admin listener %s: %s\n", bind,
                strerror(errno));
        if (fd >= 0)
            close(fd);
        return 2;
    }
    char req[256], resp[2048];
    int rl = snprintf(req, sizeof req,
                      "POST %s HTTP/1.0\r\nHost: portcullis\r\nContent-Length: 0\r\n\r\n", path);
    size_t n = 0;
    ssize_t k = send(fd, req, (size_t)rl, MSG_NOSIGNAL);
    while (k >= 0 && n < sizeof resp - 1 && (k = recv(fd, resp + n, sizeof resp - 1 - n, 0)) > 0)
        n += (size_t)k;
    int err = k < 0 ? errno : 0;
    close(fd);
    resp[n] = '\0';
    const char *body = strstr(resp, "\r\n\r\n");
    body = body ? body + 4 : "";
    if (strncmp(resp, "HTTP/1.1 200 ", 13) == 0) {
        fputs(body, stdout);
        return 0;
    }
    if (n == 0)
        fprintf(stderr, "portcullis-ctl: %s: no answer from %s%s%s\n", path + 1, bind,
                err ? ": " : "",
                err == EAGAIN ? "timed out (--timeout)"
                : err         ? strerror(err)
                              : "");
    else
        fprintf(stderr, "portcullis-ctl: %s", *body ? body : resp);
    return 1;
}

/* reload: what SIGHUP does (configuration, certificates and signatures), with the result. */
static int run_reload(struct ctl *c, int argc, char **argv)
{
    (void)argc, (void)argv;
    return admin_post(c, "/reload");
}

/* reload-signatures: the scanning engine only (freshclam's OnUpdateExecute, docs/scanning.md);
 * the answer comes when the new database is in service or the load failed. */
static int run_reload_signatures(struct ctl *c, int argc, char **argv)
{
    (void)argc, (void)argv;
    return admin_post(c, "/reload-signatures");
}

static const struct ctl_cmd commands[] = {
    {"sessions", 0, 1, true, "sessions [USER]", "list live sessions of every instance",
     run_sessions},
    {"kick", 1, 1, true, "kick USER|SESSION-ID", "end those sessions wherever they are", run_kick},
    {"unlock", 1, 1, true, "unlock USER|ADDRESS", "clear a lock-out and the login-rate bucket",
     run_unlock},
    {"route", 1, 2, true,
     "route USER [BACKEND|SERVER|-] | route show USER | route flush-cache [USER]",
     "pin a user (- unpins; none shows); show: explain the user's route; flush-cache: delete "
     "shared routing answers",
     run_route},
    {"drain", 0, 1, true, "drain [BACKEND]", "no new sessions on it (none: list drained)",
     run_drain},
    {"undrain", 1, 1, true, "undrain BACKEND", "take new sessions again", run_undrain},
    {"reload", 0, 0, false, "reload", "the local instance reloads as on SIGHUP", run_reload},
    {"reload-signatures", 0, 0, false, "reload-signatures",
     "the local instance reloads its virus signatures only", run_reload_signatures},
};

#define DEFAULT_CONFIG "/etc/portcullis/portcullis.yaml"

static void usage(FILE *f)
{
    fprintf(f, "usage: portcullis-ctl [OPTIONS] COMMAND [ARGS]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-31s %s\n", commands[i].usage, commands[i].help);
    fprintf(f, "\noptions:\n"
               "  -c, --config FILE   configuration (default " DEFAULT_CONFIG ")\n"
               "  -H, --host HOST     Redis host      -p, --port PORT     Redis port\n"
               "  -s, --socket PATH   Redis socket    -u, --user USER     Redis ACL user\n"
               "  -n, --db N          Redis database  -P, --prefix P      key prefix\n"
               "  -j, --json          sessions, drain: JSON on stdout\n"
               "  -T, --timeout SEC   reload, reload-signatures: wait this long (default 30, "
               "300)\n"
               "  -a, --admin ADDR    reload, reload-signatures: this admin listener "
               "(ADDRESS:PORT),\n"
               "                      without reading FILE (freshclam's OnUpdateExecute)\n"
               "  -V, --version       print the version    -h, --help    print this help\n"
               "\nThe Redis password comes from redis.password in FILE or "
               "$PORTCULLIS_REDIS_PASSWORD.\n"
               "Exit status: 0 done, 1 unknown target or refused, 2 usage, configuration or "
               "connection error.\nSee portcullis-ctl(8).\n");
}

static const struct option long_opts[] = {
    {"config", required_argument, NULL, 'c'},
    {"host", required_argument, NULL, 'H'},
    {"port", required_argument, NULL, 'p'},
    {"socket", required_argument, NULL, 's'},
    {"user", required_argument, NULL, 'u'},
    {"db", required_argument, NULL, 'n'},
    {"prefix", required_argument, NULL, 'P'},
    {"json", no_argument, NULL, 'j'},
    {"timeout", required_argument, NULL, 'T'},
    {"admin", required_argument, NULL, 'a'},
    {"version", no_argument, NULL, 'V'},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

struct ctl_opts {
    const char *file, *host, *sock, *user, *prefix, *admin;
    int port, db, timeout;
    bool json;
};

/* -1: exit 2 (usage on stderr); 0: exit 0 (help or version printed); 1: go on. */
static int parse_opts(int argc, char **argv, struct ctl_opts *o)
{
    int opt;
    while ((opt = getopt_long(argc, argv, "+c:H:p:s:u:n:P:jT:a:Vh", long_opts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            o->file = optarg;
            break;
        case 'H':
            o->host = optarg;
            break;
        case 'p':
            if ((o->port = opt_int(optarg, 1, 65535)) < 0)
                return -1;
            break;
        case 's':
            o->sock = optarg;
            break;
        case 'u':
            o->user = optarg;
            break;
        case 'n':
            if ((o->db = opt_int(optarg, 0, 1 << 20)) < 0)
                return -1;
            break;
        case 'P':
            o->prefix = optarg;
            break;
        case 'j':
            o->json = true;
            break;
        case 'T':
            if ((o->timeout = opt_int(optarg, 1, 86400)) < 0)
                return -1;
            break;
        case 'a':
            o->admin = optarg;
            break;
        case 'V':
            printf("portcullis-ctl %s\n", PORTCULLIS_VERSION);
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            return -1;
        }
    }
    return 1;
}

/* The Redis connection of the configuration, overridden by the options; exits 2 on failure. */
static void redis_open(struct ctl *c, const struct ctl_opts *o)
{
    const struct cfg_redis *r = &c->cfg->redis;
    const char *password = getenv("PORTCULLIS_REDIS_PASSWORD");
    if (!password)
        password = r->password;
    const char *user = o->user ? o->user : r->username;
    const char *sock = o->sock ? o->sock : o->host ? NULL : r->socket;
    const char *host = o->host ? o->host : r->addr ? r->addr : "127.0.0.1";
    int port = o->port ? o->port : r->port;
    int db = o->db >= 0 ? o->db : (int)r->db;
    struct timeval tv = {2, 0};
    c->rc = sock ? redisConnectUnixWithTimeout(sock, tv) : redisConnectWithTimeout(host, port, tv);
    if (!c->rc || c->rc->err) {
        fprintf(stderr, "portcullis-ctl: cannot connect to redis %s%s%d: %s\n", sock ? sock : host,
                sock ? "" : ":", sock ? 0 : port, c->rc ? c->rc->errstr : "out of memory");
        exit(2);
    }
    redisSetTimeout(c->rc, tv);
    if (password) {
        redisReply *a = user ? cmd(c, 3, (const char *[]){"AUTH", user, password})
                             : cmd(c, 2, (const char *[]){"AUTH", password});
        freeReplyObject(a);
    }
    if (db > 0) {
        char d[16];
        snprintf(d, sizeof d, "%d", db);
        freeReplyObject(cmd(c, 2, (const char *[]){"SELECT", d}));
    }
}

int main(int argc, char **argv)
{
    struct ctl_opts o = {.db = -1};
    int pr = parse_opts(argc, argv, &o);
    if (pr <= 0) {
        if (pr < 0)
            usage(stderr);
        return pr < 0 ? 2 : 0;
    }
    const struct ctl_cmd *cc = NULL;
    for (size_t i = 0; optind < argc && i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(argv[optind], commands[i].name) == 0)
            cc = &commands[i];
    int nargs = argc - optind - 1;
    if (!cc || nargs < cc->min_args || nargs > cc->max_args) {
        if (optind < argc && !cc)
            fprintf(stderr, "portcullis-ctl: unknown command '%s'\n", argv[optind]);
        else if (cc)
            fprintf(stderr, "portcullis-ctl: usage: portcullis-ctl %s\n", cc->usage);
        usage(stderr);
        return 2;
    }
    /* Always the configuration: it names the Redis, the key prefix, the backends ctl checks
     * names against and the admin listener. The default file too: an unreadable one is an
     * error naming it, never a silent fall-back to a Redis on localhost with other keys. */
    struct ctl c = {.cfg_path = o.file ? o.file : DEFAULT_CONFIG, .json = o.json, .admin = o.admin};
    c.timeout = o.timeout ? o.timeout : cc->run == run_reload_signatures ? 300 : 30;
    if (o.admin && !cc->redis && !o.file) /* e.g. as freshclam's user, who cannot read FILE */
        return cc->run(&c, nargs, argv + optind + 1);
    char *err = NULL;
    c.cfg = cfg_load(c.cfg_path, &err);
    if (!c.cfg) {
        fprintf(stderr, "portcullis-ctl: %s%s\n", err ? err : "cannot load the configuration ",
                err ? (o.file ? "" : " (the default; -c FILE names another)") : c.cfg_path);
        free(err);
        return 2;
    }
    c.prefix = o.prefix ? o.prefix : c.cfg->redis.prefix;
    c.fold = c.cfg->policy.user_case_insensitive;
    c.v4_prefix = c.cfg->policy.ipv4_prefix;
    c.v6_prefix = c.cfg->policy.ipv6_prefix;
    if (cc->redis)
        redis_open(&c, &o);
    int rc = cc->run(&c, nargs, argv + optind + 1);
    if (c.rc)
        redisFree(c.rc);
    cfg_unref(&c.cfg);
    return rc;
}
