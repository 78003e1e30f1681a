/*
 * route_explain — `portcullis-ctl route show USER` (issue 17): what each routing lookup of a
 * configuration says about a user, and what a login would do with it (docs/routing.md).
 *
 * For a command-line tool: it loads the map files itself, blocking, with the same parser and
 * limits as the daemon, so it shows what a running instance answers once it has reloaded the
 * files as they are now.
 */
#ifndef PORTCULLIS_ROUTE_EXPLAIN_H
#define PORTCULLIS_ROUTE_EXPLAIN_H

#include <stdbool.h>
#include <stdio.h>

#include "config.h"

/* Print one line per lookup and a `decision:` line. `override`: the administrator's pin from
 * Redis, or NULL. */
void route_explain(FILE *f, const struct config *cfg, const char *user, const char *override);

#endif
