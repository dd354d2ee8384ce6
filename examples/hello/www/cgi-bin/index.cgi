#!/bin/sh
# GET / of the example app (busybox httpd CGI). The first line is what tests look for;
# GREETING comes from the manifest's [run] env, the version from www/version.txt
# (tests change it to make a code-only commit). Each file under /run/secrets (`slipway
# secrets set`) is shown by name and SHA-256, never its content.
printf 'Content-Type: text/plain; charset=utf-8\r\n\r\n'
echo "hello from slipway"
echo "greeting: ${GREETING:-hello}"
echo "version: $(cat /app/www/version.txt 2>/dev/null || echo unknown)"
echo "host: $(hostname)"
echo "deps: $(grep -c sha256 /app/deps/LOCK 2>/dev/null || echo 0)"
for f in /run/secrets/*; do
    [ -f "$f" ] && echo "secret $(basename "$f"): sha256:$(sha256sum "$f" | cut -d' ' -f1)"
done
