/*
 * version — the one place the release number lives: both binaries (`portcullis --version`,
 * `portcullis-ctl --version`, the `event=started` line) and the packaging script read it here.
 */
#ifndef PORTCULLIS_VERSION_H
#define PORTCULLIS_VERSION_H

#define PORTCULLIS_VERSION "0.1.0"

#endif
