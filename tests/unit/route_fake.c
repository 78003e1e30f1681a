/*
 * route_fake — see route_fake.h. Included by tests/unit/test_route.c and test_route_shared.c
 * (the Makefile builds every test_*.c as its own binary), after cmocka.h.
 */
#include "route_fake.h"

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <ev.h>

struct fake_req {
    ev_timer t;
    struct fake_source *src;
    route_answer_fn *cb;
    void *arg;
};

static void fake_fire(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    struct fake_req *r = t->data;
    struct fake_source *fs = r->src;
    struct route_answer a = {.status = fs->status,
                             .source = fs->base.conf->name,
                             .rule = "fake",
                             .target = fs->status == ROUTE_FOUND ? &fs->target : NULL,
                             .user = fs->creds ? "master" : NULL,
                             .pass = fs->creds ? "secret" : NULL,
                             .reason = "fake error",
                             .wait_ms = fs->status == ROUTE_REJECT ? 1000 : 0,
                             .nocache = fs->nocache};
    r->cb(r->arg, &a);
    free(r);
}

static struct route_req *fake_start(struct route_source *src, const struct route_query *q,
                                    struct route_answer *now_r, route_answer_fn *cb, void *arg)
{
    (void)q;
    (void)now_r;
    struct fake_source *fs = (struct fake_source *)src;
    fs->started++;
    struct fake_req *r = calloc(1, sizeof *r);
    r->src = fs;
    r->cb = cb;
    r->arg = arg;
    ev_timer_init(&r->t, fake_fire, fs->delay, 0.);
    r->t.data = r;
    ev_timer_start(src->loop, &r->t);
    return (struct route_req *)r;
}

static void fake_cancel(struct route_req *req)
{
    struct fake_req *r = (struct fake_req *)req;
    r->src->cancelled++;
    ev_timer_stop(r->src->base.loop, &r->t);
    free(r);
}

static void fake_free(struct route_source *src)
{
    free(src);
}

const struct route_source_ops fake_cacheable_ops = {.type = "fake",
                                                    .cacheable = true,
                                                    .start = fake_start,
                                                    .cancel = fake_cancel,
                                                    .free = fake_free};
const struct route_source_ops fake_uncached_ops = {.type = "fake-http",
                                                   .cacheable = false,
                                                   .start = fake_start,
                                                   .cancel = fake_cancel,
                                                   .free = fake_free};

struct fake_source *fake_at(struct route_chain *c, const struct config *cfg, size_t i,
                            const struct route_source_ops *ops, double delay, enum route_status st)
{
    struct fake_source *fs =
        route_source_alloc(sizeof *fs, ops, EV_DEFAULT, &cfg->routing.lookups[i]);
    fs->delay = delay;
    fs->status = st;
    fs->target = (struct route_target){.text = "b1", .pool = true};
    route_chain_set_source(c, i, &fs->base);
    return fs;
}

char map_path[64];

void fake_map_create(const char *test, const char *text)
{
    snprintf(map_path, sizeof map_path, "/tmp/%s.%d.map", test, (int)getpid());
    FILE *f = fopen(map_path, "w");
    fputs(text, f);
    fclose(f);
}

int fake_map_teardown(void **state)
{
    (void)state;
    unlink(map_path);
    return 0;
}
