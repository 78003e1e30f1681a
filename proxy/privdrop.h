/*
 * privdrop — give up root after the privileged steps (binding ports below 1024, reading keys):
 * switch to the configured user and group, drop supplementary groups, and keep no capability
 * except CAP_NET_ADMIN when a transparent_source listener needs IP_TRANSPARENT on every
 * outbound socket. Refuses to go on as root unless the config says run_as_root: true.
 */
#ifndef PORTCULLIS_PRIVDROP_H
#define PORTCULLIS_PRIVDROP_H

#include <stdbool.h>

#include "config.h"

/* Call on the main thread before any other thread exists. */
bool privdrop(const struct config *cfg, char **error_r);
/* What privdrop() would refuse (root rules, unknown user or group), without changing anything:
 * for `portcullis -t`. Only as root, as privdrop(): unprivileged there is nothing to check. */
bool privdrop_check(const struct config *cfg, char **error_r);

#endif
