/* Unit tests for policy/: the key scheme (user escaping, address aggregation), the in-memory
 * fallback table, and — against a real redis-server started here on a free port — the async
 * client (EVALSHA, NOSCRIPT fallback, timeouts, reconnect) and the Lua scripts through
 * policy_check_login()/policy_login_failed(). */
#include <arpa/inet.h>
#include <pthread.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include <ev.h>
#include <hiredis/hiredis.h>

#include "local.h"
#include "policy.h"
#include "policy_int.h"
#include "ratelimit.h"
#include "redis.h"

/* ---- keys ------------------------------------------------------------------------------- */

static void test_user_key(void **state)
{
    (void)state;
    char k[3 * RL_USER_MAX + 1];
    rl_user_key("Alice", true, k, sizeof k);
    assert_string_equal(k, "alice");
    rl_user_key("Alice", false, k, sizeof k);
    assert_string_equal(k, "Alice");
    /* braces would end or nest the hash tag; ':' would look like our separators */
    rl_user_key("a{b}c%d:e f\x01", true, k, sizeof k);
    assert_string_equal(k, "a%7Bb%7Dc%25d%3Ae%20f%01");
    rl_user_key("j\xc3\xbcrgen", true, k, sizeof k); /* UTF-8 passes as is */
    assert_string_equal(k, "j\xc3\xbcrgen");
    char longname[600];
    memset(longname, 'x', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    assert_int_equal(rl_user_key(longname, true, k, sizeof k), RL_USER_MAX);
    char small[8];
    assert_int_equal(rl_user_key("{{{{", true, small, sizeof small), 6); /* whole escapes */
}

static void test_addr_key(void **state)
{
    (void)state;
    char k[RL_ADDR_MAX];
    assert_true(rl_addr_key_text("192.0.2.77", 32, 64, k, sizeof k));
    assert_string_equal(k, "ip:192.0.2.77/32");
    assert_true(rl_addr_key_text("192.0.2.77", 24, 64, k, sizeof k));
    assert_string_equal(k, "ip:192.0.2.0/24");
    assert_true(rl_addr_key_text("2001:db8:1:2:3:4:5:6", 32, 64, k, sizeof k));
    assert_string_equal(k, "ip:2001:db8:1:2::/64");
    assert_true(rl_addr_key_text("2001:db8:1:2ff:3:4:5:6", 32, 56, k, sizeof k));
    assert_string_equal(k, "ip:2001:db8:1:200::/56");
    assert_true(rl_addr_key_text("::ffff:198.51.100.9", 32, 64, k, sizeof k));
    assert_string_equal(k, "ip:198.51.100.9/32"); /* v4-mapped counts as IPv4 */
    assert_false(rl_addr_key_text("alice", 32, 64, k, sizeof k));
    struct sockaddr_in6 in6 = {.sin6_family = AF_INET6};
    inet_pton(AF_INET6, "2001:db8::1", &in6.sin6_addr);
    assert_true(rl_addr_key((struct sockaddr *)&in6, 32, 128, k, sizeof k));
    assert_string_equal(k, "ip:2001:db8::1/128");
    struct sockaddr sa = {.sa_family = AF_UNIX};
    assert_false(rl_addr_key(&sa, 32, 64, k, sizeof k));
    char key[RL_KEY_MAX];
    assert_true(rl_key(key, sizeof key, "pc:", "fail", "ip:192.0.2.0/24", ""));
    assert_string_equal(key, "pc:fail:{ip:192.0.2.0/24}");
    assert_false(rl_key(key, 10, "pc:", "fail", "alice", ""));
    assert_string_equal(key, "pc:fail:{"); /* truncated as snprintf would */
    assert_true(rl_key(key, sizeof key, "pc:", "rl", "bob", ":login"));
    assert_string_equal(key, "pc:rl:{bob}:login");
    /* exactly full (17 bytes and the NUL), one byte short */
    assert_true(rl_key(key, 18, "pc:", "rl", "bob", ":login"));
    assert_string_equal(key, "pc:rl:{bob}:login");
    assert_false(rl_key(key, 17, "pc:", "rl", "bob", ":login"));
    assert_string_equal(key, "pc:rl:{bob}:logi");
    assert_false(rl_key(key, 0, "pc:", "rl", "bob", ""));
    /* script arguments: decimal, truncated like snprintf */
    char n[21];
    assert_string_equal(pol_num(n, sizeof n, 0), "0");
    assert_string_equal(pol_num(n, sizeof n, 86400000), "86400000");
    assert_string_equal(pol_num(n, sizeof n, UINT64_MAX), "18446744073709551615");
    assert_string_equal(pol_num(n, 3, 12345), "12");
}

/* ---- local table -------------------------------------------------------------------------- */

static void test_local_bucket(void **state)
{
    (void)state;
    struct local_tab *t = local_new(64);
    uint64_t d;
    assert_int_equal(local_check(t, "alice", 1000, 2, 500, 0, &d), RL_OK);
    assert_int_equal(local_check(t, "alice", 1000, 2, 500, 0, &d), RL_OK);
    assert_int_equal(local_check(t, "alice", 1000, 2, 500, 0, &d), RL_RATE);
    assert_true(d > 0 && d <= 501);
    assert_int_equal(local_check(t, "bob", 1000, 2, 500, 0, &d), RL_OK);   /* own bucket */
    assert_int_equal(local_check(t, "alice", 1500, 2, 500, 0, &d), RL_OK); /* refilled one */
    assert_int_equal(local_check(t, "alice", 1500, 2, 500, 0, &d), RL_RATE);
    assert_int_equal(local_check(t, "alice", 1500, 0, 500, 0, &d), RL_OK); /* burst 0: off */
    local_free(&t);
    assert_null(t);
}

static void test_local_lockout(void **state)
{
    (void)state;
    struct local_tab *t = local_new(64);
    uint64_t d;
    assert_int_equal(local_fail(t, "u", 0, 3, 10000, 1000, 5000), 0);
    assert_int_equal(local_fail(t, "u", 10, 3, 10000, 1000, 5000), 0);
    assert_int_equal(local_fail(t, "u", 20, 3, 10000, 1000, 5000), 1000); /* level 1 */
    assert_int_equal(local_check(t, "u", 500, 0, 1, 3, &d), RL_LOCKED);
    assert_int_equal(d, 520);
    assert_int_equal(local_check(t, "u", 1100, 0, 1, 3, &d), RL_OK);
    for (int i = 0; i < 2; i++)
        local_fail(t, "u", 1200, 3, 10000, 1000, 5000);
    assert_int_equal(local_fail(t, "u", 1200, 3, 10000, 1000, 5000), 2000); /* doubled */
    for (int i = 0; i < 6; i++)
        local_fail(t, "u", 4000, 3, 10000, 1000, 5000);
    assert_int_equal(local_check(t, "u", 4001, 0, 1, 3, &d), RL_LOCKED);
    assert_true(d <= 5000); /* capped */
    local_reset(t, "u", 4002);
    assert_int_equal(local_check(t, "u", 4003, 0, 1, 3, &d), RL_OK);
    assert_int_equal(local_fail(t, "v", 0, 0, 10000, 1000, 5000), 0); /* limit 0: off */
    local_free(&t);
}

static void test_local_bounded(void **state)
{
    (void)state;
    struct local_tab *t = local_new(32);
    uint64_t d;
    char k[32];
    for (int i = 0; i < 10000; i++) {
        snprintf(k, sizeof k, "user%d", i);
        local_check(t, k, 1000, 5, 1000, 5, &d);
    }
    assert_true(local_count(t, 1000) <= 32);
    /* the most recent one survived eviction */
    for (int i = 0; i < 5; i++)
        local_check(t, k, 1000, 5, 1000, 5, &d);
    assert_int_equal(local_check(t, k, 1000, 5, 1000, 5, &d), RL_RATE);
    local_free(&t);
}

/* The lock-out model on the process-wide table (docs/redis.md "Lock-out model"). */
static const struct policy_limits model = {.user_fail_limit = 6,
                                           .pair_fail_limit = 3,
                                           .addr_fail_limit = 0,
                                           .fail_window_ms = 60000,
                                           .lockout_ms = 10000,
                                           .lockout_max_ms = 10000,
                                           .known_ttl_ms = 100000,
                                           .known_max = 4,
                                           .pend_ttl_ms = 5000};

static int lcheck(struct local_tab *t, const char *net, uint64_t now, enum local_scope *sc)
{
    uint64_t d;
    struct local_login k = {"victim", net, net};
    return local_login_check(t, &k, &model, now, sc, &d);
}

static void lfail(struct local_tab *t, const char *net, uint64_t now)
{
    struct local_login k = {"victim", net, net};
    local_login_done(t, &k, &model, now, LOCAL_FAILED, true, NULL);
}

static void test_local_pair_and_known(void **state)
{
    (void)state;
    struct local_tab *t = local_new(256);
    enum local_scope sc;
    const char *home = "ip:198.51.100.7/32", *evil = "ip:203.0.113.9/32";
    /* the victim logs in from home: home becomes known */
    assert_int_equal(lcheck(t, home, 100, &sc), RL_OK);
    local_login_done(t, &(struct local_login){"victim", home, home}, &model, 101, LOCAL_OK, true,
                     NULL);
    /* three failures from evil lock (victim, evil) only */
    for (int i = 0; i < 3; i++) {
        assert_int_equal(lcheck(t, evil, 200 + i, &sc), RL_OK);
        lfail(t, evil, 200 + i);
    }
    assert_int_equal(lcheck(t, evil, 300, &sc), RL_LOCKED);
    assert_int_equal(sc, LOCAL_SCOPE_PAIR);
    assert_int_equal(lcheck(t, home, 300, &sc), RL_OK);
    local_login_done(t, &(struct local_login){"victim", home, home}, &model, 301, LOCAL_OK, true,
                     NULL);
    /* rotating networks: the ceiling (6) locks the user on unknown networks, never at home */
    char net[64];
    for (int i = 0; i < 3; i++) {
        snprintf(net, sizeof net, "ip:192.0.2.%d/32", i);
        assert_int_equal(lcheck(t, net, 400 + i, &sc), RL_OK);
        lfail(t, net, 400 + i);
    }
    assert_int_equal(lcheck(t, "ip:192.0.2.99/32", 500, &sc), RL_LOCKED);
    assert_int_equal(sc, LOCAL_SCOPE_USER);
    assert_int_equal(lcheck(t, home, 500, &sc), RL_OK);
    local_login_done(t, &(struct local_login){"victim", home, home}, &model, 501, LOCAL_RELEASE,
                     true, NULL);
    /* failures from home count against home's own record (3) */
    for (int i = 0; i < 3; i++) {
        assert_int_equal(lcheck(t, home, 600 + i, &sc), RL_OK);
        lfail(t, home, 600 + i);
    }
    assert_int_equal(lcheck(t, home, 700, &sc), RL_LOCKED);
    assert_int_equal(sc, LOCAL_SCOPE_PAIR);
    /* the ceiling's window ends: unknown networks may try again */
    assert_int_equal(lcheck(t, "ip:192.0.2.1/32", 200000, &sc), RL_OK);
    local_free(&t);
}

static void test_local_reservation(void **state)
{
    (void)state;
    struct local_tab *t = local_new(64);
    enum local_scope sc;
    const char *n = "ip:203.0.113.1/32";
    /* 20 attempts in flight: only the pair limit (3) pass the check */
    int ok = 0;
    for (int i = 0; i < 20; i++)
        ok += lcheck(t, n, 1000, &sc) == RL_OK;
    assert_int_equal(ok, 3);
    /* one comes back as released: one more may go */
    local_login_done(t, &(struct local_login){"victim", n, n}, &model, 1001, LOCAL_RELEASE, true,
                     NULL);
    assert_int_equal(lcheck(t, n, 1002, &sc), RL_OK);
    assert_int_equal(lcheck(t, n, 1002, &sc), RL_LOCKED);
    /* reservations whose result never came expire after pend_ttl */
    assert_int_equal(lcheck(t, n, 1002 + 5001, &sc), RL_OK);
    local_free(&t);
}

struct hammer {
    struct local_tab *t;
    int allowed;
};

static void *hammer_run(void *arg)
{
    struct hammer *h = arg;
    enum local_scope sc;
    for (int i = 0; i < 200; i++) {
        if (lcheck(h->t, "ip:203.0.113.2/32", 5000, &sc) == RL_OK) {
            h->allowed++;
            lfail(h->t, "ip:203.0.113.2/32", 5000);
        }
    }
    return NULL;
}

/* Four threads (workers) on the one process-wide table: the limit holds for all of them. */
static void test_local_shared_threads(void **state)
{
    (void)state;
    struct local_tab *t = local_shared_get(1024);
    struct local_tab *t2 = local_shared_get(16);
    assert_ptr_equal(t, t2);
    local_shared_put(&t2);
    assert_null(t2);
    struct hammer h[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        h[i] = (struct hammer){t, 0};
        assert_int_equal(pthread_create(&th[i], NULL, hammer_run, &h[i]), 0);
    }
    int total = 0;
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        total += h[i].allowed;
    }
    assert_int_equal(total, 3);
    local_shared_put(&t);
}

static void test_local_take(void **state)
{
    (void)state;
    struct local_tab *t = local_new(64);
    enum local_scope sc;
    const char *n = "ip:2001:db8:1:2::/64";
    struct local_login k = {"victim", n, n};
    /* synced results are not written back */
    assert_int_equal(lcheck(t, n, 10, &sc), RL_OK);
    local_login_done(t, &k, &model, 11, LOCAL_FAILED, true, NULL);
    assert_int_equal(local_unsynced(t), 0);
    /* two failures Redis never saw, the second starts no lock-out yet (limit 3, one synced) */
    for (int i = 0; i < 2; i++) {
        assert_int_equal(lcheck(t, n, 20, &sc), RL_OK);
        local_login_done(t, &k, &model, 21, LOCAL_FAILED, false, NULL);
    }
    struct local_wb wb[8];
    size_t got = local_take(t, 30, wb, 8);
    assert_int_equal(got, 2); /* the user's ceiling and (user, network); address limit 0 */
    bool seen_p = false, seen_u = false;
    for (size_t i = 0; i < got; i++) {
        assert_int_equal(wb[i].add, 2);
        assert_string_equal(wb[i].user, "victim");
        if (wb[i].kind == 'p') {
            seen_p = true;
            assert_string_equal(wb[i].net, n); /* split at the first ':' after the user */
            assert_true(wb[i].left_ms > 0 && wb[i].left_ms <= 10000); /* 3rd failure: locked */
            assert_int_equal(wb[i].level, 1);
        } else {
            seen_u = wb[i].kind == 'u';
        }
    }
    assert_true(seen_p && seen_u);
    assert_int_equal(local_take(t, 31, wb, 8), 0); /* handed out once */
    /* a lost answer (local_login_unsynced) and a success while Redis was away */
    local_login_unsynced(t, &(struct local_login){NULL, "", n}, 40, LOCAL_FAILED);
    assert_int_equal(local_unsynced(t), 0); /* no address record: nothing to mark */
    local_login_done(t, &k, &model, 41, LOCAL_OK, false, NULL);
    got = local_take(t, 42, wb, 8);
    assert_int_equal(got, 1);
    assert_int_equal(wb[0].kind, 'k');
    assert_string_equal(wb[0].net, n);
    local_free(&t);
}

/* ---- against a real redis-server ------------------------------------------------------------ */

static pid_t redis_pid;
static int redis_port;

static bool redis_sock(int fd);

/* write() calls on sockets connected to the test's redis-server (hiredis writes with write()). */
static unsigned g_redis_writes;
ssize_t write(int fd, const void *p, size_t n)
{
    if (redis_sock(fd))
        g_redis_writes++;
    return syscall(SYS_write, fd, p, n);
}

static bool redis_sock(int fd)
{
    struct sockaddr_in a;
    socklen_t l = sizeof a;
    return redis_port && getpeername(fd, (struct sockaddr *)&a, &l) == 0 &&
           a.sin_family == AF_INET && ntohs(a.sin_port) == redis_port;
}

/* epoll_ctl() calls (libev's) for those sockets: watcher changes the kernel is told about. */
static unsigned g_redis_epoll_ctls;
int epoll_ctl(int epfd, int op, int fd, struct epoll_event *ev)
{
    if (redis_sock(fd))
        g_redis_epoll_ctls++;
    return (int)syscall(SYS_epoll_ctl, epfd, op, fd, ev);
}

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    bind(fd, (struct sockaddr *)&a, sizeof a);
    socklen_t l = sizeof a;
    getsockname(fd, (struct sockaddr *)&a, &l);
    close(fd);
    return ntohs(a.sin_port);
}

static redisContext *sync_conn(void)
{
    struct timeval tv = {1, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", redis_port, tv);
    if (c && c->err) {
        redisFree(c);
        return NULL;
    }
    return c;
}

static bool start_redis(void)
{
    char port[16];
    snprintf(port, sizeof port, "%d", redis_port);
    redis_pid = fork();
    if (redis_pid == 0) {
        freopen("/dev/null", "w", stdout);
        execlp("redis-server", "redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--daemonize", "no", "--enable-debug-command", "yes",
               (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 200; i++) {
        redisContext *c = sync_conn();
        if (c) {
            redisReply *r = redisCommand(c, "PING");
            bool ok = r && r->type == REDIS_REPLY_STATUS;
            freeReplyObject(r);
            redisFree(c);
            if (ok)
                return true;
        }
        usleep(20000);
    }
    return false;
}

static void stop_redis(void)
{
    if (redis_pid > 0) {
        kill(redis_pid, SIGKILL);
        waitpid(redis_pid, NULL, 0);
        redis_pid = 0;
    }
}

static int setup_redis(void **state)
{
    (void)state;
    redis_port = free_port();
    return start_redis() ? 0 : -1;
}

static int teardown_redis(void **state)
{
    (void)state;
    stop_redis();
    return 0;
}

static void redis_do(const char *fmt, ...)
{
    redisContext *c = sync_conn();
    assert_non_null(c);
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    freeReplyObject(r);
    redisFree(c);
}

/* Run the loop until *flag or `secs` pass. */
static void run_until(struct ev_loop *loop, const bool *flag, double secs)
{
    ev_tstamp end = ev_time() + secs;
    while (!*flag && ev_time() < end) {
        ev_now_update(loop);
        ev_run(loop, EVRUN_NOWAIT);
        usleep(2000);
    }
}

static struct rds_opts opts(void)
{
    return (struct rds_opts){.host = "127.0.0.1",
                             .port = (uint16_t)redis_port,
                             .connect_timeout = 0.5,
                             .command_timeout = 0.2,
                             .backoff_min = 0.05,
                             .backoff_max = 0.2};
}

struct got {
    bool done, up;
    bool null_reply;
    long long integer;
    char str[64];
};

static void on_state(void *arg, bool up)
{
    struct got *g = arg;
    g->up = up;
}

/* A command connection to the test's redis-server, connected. */
static struct rds *rds_up(struct ev_loop *loop, struct got *st)
{
    struct rds_opts o = opts();
    struct rds *r = rds_new(loop, &o, "test", on_state, NULL, st);
    run_until(loop, &st->up, 2);
    assert_true(st->up && rds_ready(r));
    return r;
}

static void on_reply(void *arg, const redisReply *r)
{
    struct got *g = arg;
    g->done = true;
    g->null_reply = r == NULL;
    if (r && r->type == REDIS_REPLY_INTEGER)
        g->integer = r->integer;
    if (r && (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS))
        snprintf(g->str, sizeof g->str, "%s", r->str);
}

struct seq {
    int n;
    long long got[3];
};

static void on_incr(void *arg, const redisReply *r)
{
    struct seq *q = arg;
    if (q->n < 3)
        q->got[q->n++] = r && r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
}

/* issue 19: the commands of one loop iteration leave in one write(), made before the loop
 * polls, and are answered in order — with no epoll_ctl for the connection (hiredis' adapter
 * alone turned EPOLLOUT on and off again for every command). */
static void test_rds_one_write_per_iteration(void **state)
{
    (void)state;
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct got st = {0};
    struct rds *r = rds_up(loop, &st);
    redis_do("DEL ut:pipe");
    struct seq q = {0};
    const char *argv[] = {"INCR", "ut:pipe"};
    size_t lens[] = {4, 7};
    g_redis_writes = g_redis_epoll_ctls = 0;
    for (int i = 0; i < 3; i++)
        assert_non_null(rds_call(r, 2, argv, lens, on_incr, &q));
    assert_int_equal(g_redis_writes, 0); /* nothing from inside the calls */
    ev_run(loop, EVRUN_NOWAIT);
    assert_int_equal(g_redis_writes, 1);
    for (int i = 0; i < 1000 && q.n < 3; i++) {
        ev_run(loop, EVRUN_NOWAIT);
        usleep(1000);
    }
    assert_int_equal(q.n, 3);
    assert_int_equal(q.got[0], 1);
    assert_int_equal(q.got[1], 2);
    assert_int_equal(q.got[2], 3);
    assert_int_equal(g_redis_writes, 1);
    assert_int_equal(g_redis_epoll_ctls, 0);
    assert_int_equal(rds_pending(r), 0);
    rds_free(&r);
    ev_loop_destroy(loop);
}

static void test_rds_eval_noscript_timeout_reconnect(void **state)
{
    (void)state;
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct got st = {0};
    struct rds_opts o = opts();
    struct rds *r = rds_new(loop, &o, "test", on_state, NULL, &st);
    assert_null(rds_call(r, 1, (const char *[]){"PING"}, (size_t[]){4}, on_reply, &st));
    run_until(loop, &st.up, 2);
    assert_true(st.up && rds_ready(r));

    /* EVALSHA of a script the server never saw: NOSCRIPT, then EVAL, one callback. */
    struct rds_script s;
    rds_script_init(&s, "incr", "return redis.call('INCRBY', KEYS[1], ARGV[1])");
    redis_do("SCRIPT FLUSH");
    struct got g = {0};
    const char *argv[] = {"ut:n", "5"};
    size_t lens[] = {4, 1};
    assert_non_null(rds_eval(r, &s, 1, 2, argv, lens, on_reply, &g));
    assert_false(g.done); /* never synchronously */
    run_until(loop, &g.done, 2);
    assert_int_equal(g.integer, 5);
    assert_int_equal(rds_stats(r)->noscript, 1);
    g = (struct got){0};
    assert_non_null(rds_eval(r, &s, 1, 2, argv, lens, on_reply, &g));
    run_until(loop, &g.done, 2);
    assert_int_equal(g.integer, 10);
    assert_int_equal(rds_stats(r)->noscript, 1);

    /* A stuck server: the command times out (NULL), the connection is dropped and comes back. */
    redisContext *blocker = sync_conn();
    assert_non_null(blocker);
    redisAppendCommand(blocker, "DEBUG SLEEP 0.6");
    int wdone = 0;
    redisBufferWrite(blocker, &wdone);
    usleep(20000);
    g = (struct got){0};
    ev_tstamp t0 = ev_time();
    assert_non_null(
        rds_call(r, 2, (const char *[]){"GET", "ut:n"}, (size_t[]){3, 4}, on_reply, &g));
    run_until(loop, &g.done, 2);
    assert_true(g.null_reply);
    assert_true(ev_time() - t0 < 0.5);
    assert_int_equal(rds_stats(r)->timeouts, 1);
    assert_false(rds_ready(r));
    redisFree(blocker);
    st.up = false;
    run_until(loop, &st.up, 3);
    assert_true(rds_ready(r));

    /* Killed: pending callbacks get NULL; restarted: ready again. */
    g = (struct got){0};
    assert_non_null(rds_call(r, 3, (const char *[]){"BLPOP", "ut:nothing", "0"},
                             (size_t[]){5, 10, 1}, on_reply, &g));
    stop_redis();
    run_until(loop, &g.done, 2);
    assert_true(g.null_reply);
    assert_false(rds_ready(r));
    assert_null(rds_call(r, 1, (const char *[]){"PING"}, (size_t[]){4}, on_reply, &g));
    assert_true(start_redis());
    st.up = false;
    run_until(loop, &st.up, 3);
    assert_true(rds_ready(r));
    rds_free(&r);
    assert_null(r);
    ev_loop_destroy(loop);
}

static void on_verdict(void *arg, const struct policy_verdict *v)
{
    *(struct policy_verdict *)arg = *v;
}

static struct policy_verdict check(struct ev_loop *loop, struct policy *p,
                                   const struct policy_limits *l, const struct policy_who *w)
{
    struct policy_verdict v = {.result = (enum policy_result) - 1};
    struct policy_req *r = policy_check_login(p, l, w, on_verdict, &v);
    assert_non_null(r);
    assert_int_equal((int)v.result, -1); /* never synchronously */
    ev_tstamp end = ev_time() + 2;
    while ((int)v.result == -1 && ev_time() < end) {
        ev_now_update(loop);
        ev_run(loop, EVRUN_NOWAIT);
        usleep(1000);
    }
    return v;
}

/* The conf of a policy on the test's Redis. */
static struct policy_conf live_conf(const char *prefix, uint64_t heartbeat_ms, uint64_t ttl_ms,
                                    size_t local_entries)
{
    return (struct policy_conf){.use_redis = true,
                                .redis = opts(),
                                .prefix = prefix,
                                .heartbeat_ms = heartbeat_ms,
                                .session_ttl_ms = ttl_ms,
                                .local_entries = local_entries};
}

/* A policy whose Redis link is up: the checks that follow go to Redis, not to the table. */
static struct policy *live_policy(struct ev_loop *loop, const struct policy_conf *pc)
{
    struct policy *p = policy_new(loop, pc);
    assert_non_null(p);
    bool never = false;
    run_until(loop, &never, 0.3);
    assert_true(policy_redis_up(p));
    return p;
}

/* check() whose result must be `want`. */
static struct policy_verdict check_is(struct ev_loop *loop, struct policy *p,
                                      const struct policy_limits *l, const struct policy_who *w,
                                      enum policy_result want)
{
    struct policy_verdict v = check(loop, p, l, w);
    assert_int_equal(v.result, want);
    return v;
}

static void test_policy_scripts(void **state)
{
    (void)state;
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct policy_conf pc = live_conf("ut:", 100, 300, 100);
    struct policy *p = live_policy(loop, &pc);
    bool never = false;
    struct sockaddr_in6 sa = {.sin6_family = AF_INET6};
    inet_pton(AF_INET6, "2001:db8:5:6:7::8", &sa.sin6_addr);
    struct policy_limits l = {.v4_prefix = 32,
                              .v6_prefix = 64,
                              .fold_case = true,
                              .user_burst = 3,
                              .user_interval_ms = 100000,
                              .user_fail_limit = 2,
                              .addr_fail_limit = 5,
                              .fail_window_ms = 60000,
                              .lockout_ms = 150,
                              .lockout_max_ms = 1000,
                              .user_max_sessions = 1};
    struct policy_who w = {.user = "Dave", .addr = (struct sockaddr *)&sa, .sid = "s1"};
    struct policy_verdict v = check_is(loop, p, &l, &w, POLICY_ALLOW);
    assert_false(v.degraded);
    /* the slot is reserved: a second session of dave is over the cap */
    struct policy_who w2 = w;
    w2.user = "dave";
    w2.sid = "s2";
    v = check_is(loop, p, &l, &w2, POLICY_SESSIONS);
    assert_int_equal(v.scope, POLICY_SCOPE_USER);
    policy_release(p, &l, &w);
    run_until(loop, &never, 0.1);
    /* two failures lock dave out; the address (its /64) has its own counter */
    policy_login_failed(p, &l, &w);
    policy_login_failed(p, &l, &w);
    run_until(loop, &never, 0.1);
    v = check_is(loop, p, &l, &w2, POLICY_LOCKED);
    assert_true(v.retry_ms > 0 && v.retry_ms <= 150);
    redisContext *c = sync_conn();
    redisReply *rep = redisCommand(c, "EXISTS ut:fail:{ip:2001:db8:5:6::/64}");
    assert_int_equal(rep->integer, 1);
    freeReplyObject(rep);
    run_until(loop, &never, 0.2);
    check_is(loop, p, &l, &w2, POLICY_ALLOW);
    check_is(loop, p, &l, &(struct policy_who){.user = "dave", .sid = "s3"}, POLICY_SESSIONS);
    policy_release(p, &l, &w2);
    run_until(loop, &never, 0.1);
    /* 3 tokens: s1 and s2 took one each; refusals (cap, lock-out) took none */
    struct policy_who w4 = {.user = "dave", .sid = "s4"};
    check_is(loop, p, &l, &w4, POLICY_ALLOW);
    policy_release(p, &l, &w4);
    run_until(loop, &never, 0.1);
    v = check_is(loop, p, &l, &(struct policy_who){.user = "dave", .sid = "s5"}, POLICY_RATE);
    assert_true(v.retry_ms > 0);
    rep = redisCommand(c, "HGET ut:rl:{dave}:login tok");
    assert_true(rep->type == REDIS_REPLY_STRING && atof(rep->str) < 1);
    freeReplyObject(rep);

    /* a registered session: hash, heartbeat, kick, unregister */
    l.user_burst = 0;
    l.user_max_sessions = 0;
    struct policy_sess_info info = {"[2001:db8:5:6:7::8]:1234", "be1", "ut", "imap", 1};
    bool kicked = false;
    struct policy_sess *ps =
        policy_session_open(p, &l, &(struct policy_who){.user = "erin", .sid = "e1"}, &info,
                            (policy_kick_cb *)(void (*)(void *))NULL, NULL, &kicked);
    assert_non_null(ps);
    run_until(loop, &never, 0.4); /* longer than the TTL: heartbeats keep it */
    rep = redisCommand(c, "HGET ut:sess:{erin}:e1 backend");
    assert_int_equal(rep->type, REDIS_REPLY_STRING);
    assert_string_equal(rep->str, "be1");
    freeReplyObject(rep);
    policy_session_close(&ps);
    run_until(loop, &never, 0.1);
    rep = redisCommand(c, "EXISTS ut:sess:{erin}:e1");
    assert_int_equal(rep->integer, 0);
    freeReplyObject(rep);
    redisFree(c);

    /* Redis gone, fail open: the local table answers (it saw the same checks) */
    stop_redis();
    run_until(loop, &never, 0.1);
    v = check_is(loop, p, &(struct policy_limits){.user_burst = 1, .user_interval_ms = 100000},
                 &(struct policy_who){.user = "frank", .sid = "f1"}, POLICY_ALLOW);
    assert_true(v.degraded);
    v = check_is(loop, p, &(struct policy_limits){.user_burst = 1, .user_interval_ms = 100000},
                 &(struct policy_who){.user = "frank", .sid = "f2"}, POLICY_RATE);
    assert_true(v.degraded);
    policy_free(&p);
    /* fail closed */
    pc.fail_closed = true;
    p = policy_new(loop, &pc);
    check_is(loop, p, &l, &w, POLICY_UNAVAILABLE);
    /* cancelled: the callback never runs */
    struct policy_verdict none = {.result = (enum policy_result) - 1};
    struct policy_req *r = policy_check_login(p, &l, &w, on_verdict, &none);
    policy_cancel(&r);
    assert_null(r);
    run_until(loop, &never, 0.05);
    assert_int_equal((int)none.result, -1);
    policy_free(&p);
    assert_true(start_redis());
    ev_loop_destroy(loop);
}

static struct sockaddr_in v4(const char *ip)
{
    struct sockaddr_in a = {.sin_family = AF_INET};
    inet_pton(AF_INET, ip, &a.sin_addr);
    return a;
}

static long long redis_int(const char *fmt, ...)
{
    redisContext *c = sync_conn();
    assert_non_null(c);
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    long long v = -1;
    if (r && r->type == REDIS_REPLY_INTEGER)
        v = r->integer;
    else if (r && r->type == REDIS_REPLY_STRING)
        v = atoll(r->str);
    freeReplyObject(r);
    redisFree(c);
    return v;
}

/* issue 19: a command nobody waits for (registration, heartbeat, unregistration) gets no write
 * of its own: it waits, watcher off, for the next command that is waited for and leaves with it
 * in order, or leaves alone after RDS_LAZY_DELAY. */
static void test_rds_lazy_rides_with_next_command(void **state)
{
    (void)state;
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct got st = {0};
    struct rds *r = rds_up(loop, &st);
    redis_do("DEL ut:lazy");
    struct rds_script s;
    rds_script_init(&s, "incr", "return redis.call('INCR', KEYS[1])");
    struct got g = {0};
    const char *key[] = {"ut:lazy"};
    size_t klen[] = {7};
    assert_non_null(rds_eval(r, &s, 1, 1, key, klen, on_reply, &g)); /* loads the script */
    run_until(loop, &g.done, 2);
    assert_int_equal(g.integer, 1);
    struct seq q = {0};
    g_redis_writes = g_redis_epoll_ctls = 0;
    for (int i = 0; i < 3; i++) { /* three loop passes, well within the delay */
        assert_non_null(rds_eval_lazy(r, &s, 1, 1, key, klen, on_incr, &q));
        ev_run(loop, EVRUN_NOWAIT);
    }
    assert_int_equal(g_redis_writes, 0);
    assert_int_equal(g_redis_epoll_ctls, 0); /* the write watcher never reached epoll */
    assert_int_equal(redis_int("GET ut:lazy"), 1);
    g_redis_writes = 0; /* redis_int's own connection writes too */
    g = (struct got){0};
    assert_non_null(
        rds_call(r, 2, (const char *[]){"GET", "ut:lazy"}, (size_t[]){3, 7}, on_reply, &g));
    run_until(loop, &g.done, 2);
    assert_string_equal(g.str, "4"); /* after the three, in order */
    assert_int_equal(q.n, 3);
    assert_int_equal(q.got[0], 2);
    assert_int_equal(q.got[2], 4);
    assert_int_equal(g_redis_writes, 1);
    /* Alone: written once the delay has passed. */
    q = (struct seq){0};
    g_redis_writes = 0;
    assert_non_null(rds_eval_lazy(r, &s, 1, 1, key, klen, on_incr, &q));
    ev_run(loop, EVRUN_NOWAIT);
    assert_int_equal(g_redis_writes, 0);
    for (int i = 0; i < 1000 && q.n < 1; i++) {
        ev_now_update(loop);
        ev_run(loop, EVRUN_NOWAIT);
        usleep(1000);
    }
    assert_int_equal(q.got[0], 5);
    assert_int_equal(g_redis_writes, 1);
    /* Freed while one waits: it is written first. */
    assert_non_null(rds_eval_lazy(r, &s, 1, 1, key, klen, NULL, NULL));
    rds_free(&r);
    for (int i = 0; i < 200 && redis_int("GET ut:lazy") != 6; i++)
        usleep(1000);
    assert_int_equal(redis_int("GET ut:lazy"), 6);
    ev_loop_destroy(loop);
}

/* The lock-out model against Redis, with two policy objects on one loop standing for two
 * workers of one process (they share the process-wide table). */
static void test_policy_lockout_model(void **state)
{
    (void)state;
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct policy_conf pc = live_conf("lm:", 1000, 3000, 1000);
    struct policy *p1 = live_policy(loop, &pc), *p2 = live_policy(loop, &pc);
    bool never = false;
    struct policy_limits l = {.v4_prefix = 32,
                              .v6_prefix = 64,
                              .user_fail_limit = 10,
                              .pair_fail_limit = 3,
                              .fail_window_ms = 60000,
                              .lockout_ms = 5000,
                              .lockout_max_ms = 5000,
                              .known_ttl_ms = 100000,
                              .known_max = 4,
                              .pend_ttl_ms = 5000};
    struct sockaddr_in home = v4("198.51.100.7"), evil = v4("203.0.113.9"), away = v4("192.0.2.50");
    struct policy_who wh = {.user = "victim", .addr = (struct sockaddr *)&home, .sid = "h1"};
    /* the victim logs in from home: home becomes known */
    check_is(loop, p1, &l, &wh, POLICY_ALLOW);
    struct policy_sess_info info = {"198.51.100.7:1", "be1", "ut", "imap", 1};
    struct policy_sess *ps = policy_session_open(p1, &l, &wh, &info, NULL, NULL, NULL);
    run_until(loop, &never, 0.1);
    assert_true(redis_int("ZSCORE lm:known:{victim} ip:198.51.100.7/32") > 0);
    assert_int_equal(redis_int("ZCARD lm:pend:{victim}:ip:198.51.100.7/32"), 0); /* released */
    policy_session_close(&ps);

    /* 20 wrong attempts from evil at once, spread over both workers: 3 get through */
    struct policy_verdict vs[20];
    struct policy_req *rq[20];
    struct policy_who we[20];
    char sids[20][8];
    for (int i = 0; i < 20; i++) {
        snprintf(sids[i], sizeof sids[i], "e%d", i);
        we[i] =
            (struct policy_who){.user = "victim", .addr = (struct sockaddr *)&evil, .sid = sids[i]};
        vs[i].result = (enum policy_result) - 1;
        rq[i] = policy_check_login(i % 2 ? p2 : p1, &l, &we[i], on_verdict, &vs[i]);
        assert_non_null(rq[i]);
    }
    int done = 0, allowed = 0;
    ev_tstamp end = ev_time() + 3;
    while (done < 20 && ev_time() < end) {
        ev_now_update(loop);
        ev_run(loop, EVRUN_NOWAIT);
        usleep(1000);
        done = 0;
        for (int i = 0; i < 20; i++)
            done += (int)vs[i].result != -1;
    }
    assert_int_equal(done, 20);
    for (int i = 0; i < 20; i++)
        allowed += vs[i].result == POLICY_ALLOW;
    assert_int_equal(allowed, 3);
    assert_int_equal(redis_int("ZCARD lm:pend:{victim}:ip:203.0.113.9/32"), 3);
    for (int i = 0; i < 20; i++)
        if (vs[i].result == POLICY_ALLOW)
            policy_login_failed(i % 2 ? p2 : p1, &l, &we[i]);
    run_until(loop, &never, 0.1);
    assert_int_equal(redis_int("ZCARD lm:pend:{victim}:ip:203.0.113.9/32"), 0);
    struct policy_verdict v = check_is(loop, p2, &l, &we[0], POLICY_LOCKED);
    assert_int_equal(v.scope, POLICY_SCOPE_PAIR);
    assert_false(v.degraded);
    assert_true(redis_int("HGET lm:fail:{victim}:ip:203.0.113.9/32 until") > 0);
    assert_int_equal(redis_int("HGET lm:fail:{victim} n"), 3);
    /* the victim at home is not locked out */
    wh.sid = "h2";
    check_is(loop, p2, &l, &wh, POLICY_ALLOW);
    policy_release(p2, &l, &wh);

    /* Redis down: the process-wide table counts for both workers */
    stop_redis();
    run_until(loop, &never, 0.3);
    struct policy_who wa = {.user = "victim", .addr = (struct sockaddr *)&away, .sid = "a1"};
    for (int i = 0; i < 3; i++) {
        struct policy *pw = i % 2 ? p2 : p1;
        v = check(loop, pw, &l, &wa);
        assert_int_equal(v.result, POLICY_ALLOW);
        assert_true(v.degraded);
        policy_login_failed(pw, &l, &wa);
    }
    v = check_is(loop, p2, &l, &wa, POLICY_LOCKED);
    assert_int_equal(v.scope, POLICY_SCOPE_PAIR);
    assert_true(v.degraded);
    check_is(loop, p1, &l, &wa, POLICY_LOCKED);
    /* home still works (the table remembered it as known) */
    wh.sid = "h3";
    v = check_is(loop, p1, &l, &wh, POLICY_ALLOW);
    assert_true(v.degraded);
    policy_release(p1, &l, &wh);

    /* Redis back (empty): the outage's failures and lock-out are written back, once */
    assert_true(start_redis());
    end = ev_time() + 3;
    while (redis_int("EXISTS lm:fail:{victim}:ip:192.0.2.50/32") != 1 && ev_time() < end)
        run_until(loop, &never, 0.05);
    run_until(loop, &never, 1.2); /* a second worker's timer finds nothing more */
    long long until = redis_int("HGET lm:fail:{victim}:ip:192.0.2.50/32 until");
    assert_true(until > 0);
    assert_int_equal(redis_int("HGET lm:fail:{victim}:ip:192.0.2.50/32 level"), 1);
    assert_int_equal(redis_int("HGET lm:fail:{victim} n"), 3);
    v = check_is(loop, p2, &l, &wa, POLICY_LOCKED);
    assert_false(v.degraded);
    policy_free(&p1);
    policy_free(&p2);
    ev_loop_destroy(loop);
}

static bool has_done(uint64_t done, unsigned bit)
{
    return (done % RL_DONE_TIME) & bit;
}

/* The check says what it reserved (`done`); the registration undoes exactly that, with the
 * check's time, and leaves the same state as one that knows nothing (done = 0). Stale members
 * of a session set are trimmed only when they would refuse; a fresh known network is not
 * rewritten. */
static void test_policy_done(void **state)
{
    (void)state;
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct policy_conf pc = live_conf("rd:", 60000, 120000, 100);
    struct policy *p = live_policy(loop, &pc);
    bool never = false;
    struct sockaddr_in sa = v4("198.51.100.7");
    struct policy_limits l = {.v4_prefix = 32,
                              .v6_prefix = 64,
                              .user_burst = 10,
                              .user_interval_ms = 1000,
                              .addr_burst = 10,
                              .addr_interval_ms = 1000,
                              .user_fail_limit = 10,
                              .pair_fail_limit = 5,
                              .addr_fail_limit = 10,
                              .known_ttl_ms = 100000,
                              .known_max = 4,
                              .fail_window_ms = 60000,
                              .lockout_ms = 1000,
                              .lockout_max_ms = 5000,
                              .user_max_sessions = 2,
                              .addr_max_sessions = 5};
    struct policy_sess_info info = {"198.51.100.7:1", "be1", "ut", "imap", 1};
    struct policy_who w = {.user = "gail", .addr = (struct sockaddr *)&sa, .sid = "g0"};
    /* a failure from the network: the record the success must delete */
    struct policy_verdict v = check_is(loop, p, &l, &w, POLICY_ALLOW);
    policy_login_failed(p, &l, &w);
    run_until(loop, &never, 0.1);
    assert_int_equal(redis_int("EXISTS rd:fail:{gail}:ip:198.51.100.7/32"), 1);

    w.sid = "g1";
    v = check_is(loop, p, &l, &w, POLICY_ALLOW);
    const unsigned all = RL_DONE_VALID | RL_DONE_CONN_U | RL_DONE_CONN_A | RL_DONE_PEND_U |
                         RL_DONE_PEND_UA | RL_DONE_PEND_A | RL_DONE_FAIL_UA;
    assert_int_equal(v.done % RL_DONE_TIME, all); /* a new network: not known */
    long long t1 = (long long)(v.done / RL_DONE_TIME);
    assert_true(t1 > 0);
    assert_int_equal(redis_int("ZSCORE rd:pend:{gail} g1"), t1);
    assert_int_equal(redis_int("ZSCORE rd:pend:{ip:198.51.100.7/32} g1"), t1);
    w.done = v.done;
    struct policy_sess *s1 = policy_session_open(p, &l, &w, &info, NULL, NULL, NULL);
    assert_non_null(s1);
    run_until(loop, &never, 0.1);
    assert_int_equal(redis_int("EXISTS rd:pend:{gail} rd:pend:{gail}:ip:198.51.100.7/32 "
                               "rd:pend:{ip:198.51.100.7/32} rd:fail:{gail}:ip:198.51.100.7/32"),
                     0);
    assert_int_equal(redis_int("ZSCORE rd:conn:{gail} g1"), t1);
    assert_int_equal(redis_int("ZSCORE rd:conn:{ip:198.51.100.7/32} g1"), t1);
    assert_int_equal(redis_int("ZSCORE rd:known:{gail} ip:198.51.100.7/32"), t1);
    assert_int_equal(redis_int("HGET rd:sess:{gail}:g1 heartbeat"), t1);
    assert_true(redis_int("PTTL rd:known:{gail}") > 100000); /* known_ttl + slack */

    /* the network is known now, and fresh: not rewritten by the next success */
    w.sid = "g2";
    v = check_is(loop, p, &l, &w, POLICY_ALLOW);
    assert_true(has_done(v.done, RL_DONE_KNOWN));
    assert_false(has_done(v.done, RL_DONE_PEND_U) || has_done(v.done, RL_DONE_FAIL_UA));
    w.done = v.done;
    struct policy_sess *s2 = policy_session_open(p, &l, &w, &info, NULL, NULL, NULL);
    run_until(loop, &never, 0.1);
    assert_int_equal(redis_int("ZSCORE rd:known:{gail} ip:198.51.100.7/32"), t1);
    assert_int_equal(redis_int("EXISTS rd:pend:{gail}:ip:198.51.100.7/32"), 0);
    policy_session_close(&s2);

    /* a registration that knows nothing of its check (done 0: no answer) does everything */
    w.sid = "g3";
    v = check_is(loop, p, &l, &w, POLICY_ALLOW);
    w.done = 0;
    struct policy_sess *s3 = policy_session_open(p, &l, &w, &info, NULL, NULL, NULL);
    run_until(loop, &never, 0.1);
    assert_int_equal(redis_int("EXISTS rd:pend:{gail}:ip:198.51.100.7/32 "
                               "rd:pend:{ip:198.51.100.7/32}"),
                     0);
    long long hb = redis_int("HGET rd:sess:{gail}:g3 heartbeat");
    assert_true(hb >= (long long)(v.done / RL_DONE_TIME));
    assert_int_equal(redis_int("ZSCORE rd:conn:{gail} g3"), hb);
    assert_int_equal(redis_int("ZSCORE rd:known:{gail} ip:198.51.100.7/32"), hb);
    policy_session_close(&s3);
    run_until(loop, &never, 0.1);

    /* a dead instance's member: kept below the cap, trimmed when it would refuse */
    redis_do("ZADD rd:conn:{gail} 1 dead");
    l.user_max_sessions = 3;
    w.sid = "g4";
    check_is(loop, p, &l, &w, POLICY_ALLOW);
    assert_int_equal(redis_int("ZSCORE rd:conn:{gail} dead"), 1);
    policy_release(p, &l, &w);
    run_until(loop, &never, 0.1);
    l.user_max_sessions = 2; /* g1 + dead: at the cap until dead is trimmed */
    w.sid = "g5";
    check_is(loop, p, &l, &w, POLICY_ALLOW);
    assert_int_equal(redis_int("ZSCORE rd:conn:{gail} dead"), -1);
    policy_release(p, &l, &w);
    run_until(loop, &never, 0.1);

    /* the bucket: `exp` belongs to its `ts`, and the TTL lasts until the bucket is full */
    redisContext *c = sync_conn();
    redisReply *rep = redisCommand(c, "HMGET rd:rl:{gail}:login:ip:198.51.100.7/32 tok ts exp");
    assert_int_equal(rep->type, REDIS_REPLY_ARRAY);
    assert_int_equal(rep->element[2]->type, REDIS_REPLY_STRING);
    double tok = atof(rep->element[0]->str);
    char want[64];
    snprintf(want, sizeof want, "%s:", rep->element[1]->str);
    assert_memory_equal(rep->element[2]->str, want, strlen(want));
    freeReplyObject(rep);
    redisFree(c);
    long long pttl = redis_int("PTTL rd:rl:{gail}:login:ip:198.51.100.7/32");
    assert_true(pttl >= (long long)((10 - tok) * 1000) + 1000 - 500); /* 0.5 s of test time */
    assert_true(pttl <= (long long)((10 - tok) * 1000) + 1000 + 16 * 1000);

    policy_session_close(&s1);
    run_until(loop, &never, 0.1);
    assert_int_equal(redis_int("EXISTS rd:sess:{gail}:g1"), 0);
    assert_int_equal(redis_int("ZCARD rd:conn:{gail}"), 0);
    policy_free(&p);
    ev_loop_destroy(loop);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest pure[] = {
        cmocka_unit_test(test_user_key),          cmocka_unit_test(test_addr_key),
        cmocka_unit_test(test_local_bucket),      cmocka_unit_test(test_local_lockout),
        cmocka_unit_test(test_local_bounded),     cmocka_unit_test(test_local_pair_and_known),
        cmocka_unit_test(test_local_reservation), cmocka_unit_test(test_local_shared_threads),
        cmocka_unit_test(test_local_take),
    };
    const struct CMUnitTest live[] = {
        cmocka_unit_test(test_rds_eval_noscript_timeout_reconnect),
        cmocka_unit_test(test_rds_one_write_per_iteration),
        cmocka_unit_test(test_rds_lazy_rides_with_next_command),
        cmocka_unit_test(test_policy_scripts),
        cmocka_unit_test(test_policy_lockout_model),
        cmocka_unit_test(test_policy_done),
    };
    int rc = cmocka_run_group_tests_name("policy", pure, NULL, NULL);
    rc += cmocka_run_group_tests_name("policy_redis", live, setup_redis, teardown_redis);
    return rc;
}
