#!/bin/sh
# faceverify container entry point: uvicorn on app.main:app.
#   HOST (0.0.0.0), PORT (8000)      the bind
#   WEB_CONCURRENCY (1)              uvicorn worker processes. Each has its own model copy and
#                                    dynamic batcher: prefer more replicas (compose --scale)
#                                    over more workers, and 1 worker per GPU.
#   FACEVERIFY_TORCH_THREADS, OMP_NUM_THREADS (2), FACEVERIFY_DETECT_WORKERS (2)
#                                    threads per worker (torch intra-op, OpenMP, detection)
#   GRACEFUL_TIMEOUT_S (25)          seconds to finish queued work after SIGTERM
#   FORWARDED_ALLOW_IPS (*)          proxies trusted for X-Forwarded-* (the nginx of the scale
#                                    profile); the port is never published beyond 127.0.0.1
# Any arguments are passed on to uvicorn. FACEVERIFY_* settings: docs/api.md.
set -eu
exec uvicorn app.main:app \
    --host "${HOST:-0.0.0.0}" \
    --port "${PORT:-8000}" \
    --workers "${WEB_CONCURRENCY:-1}" \
    --timeout-graceful-shutdown "${GRACEFUL_TIMEOUT_S:-25}" \
    --proxy-headers --forwarded-allow-ips "${FORWARDED_ALLOW_IPS:-*}" \
    --no-access-log \
    "$@"
