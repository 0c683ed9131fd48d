#!/usr/bin/env bash
# The main job: installs and starts the services, builds every function and
# serves them all under `cargo lambda watch` on http://localhost:9000 with the
# production paths (`curl localhost:9000/signup ...`). Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# Settings from .env (see .env.example), under any set in the environment.
source scripts/dotenv.sh
load_dotenv .env
source scripts/services.sh

# A development secret, generated once and kept in .dev/ so tokens survive restarts.
# (.dev/ is made here: services.sh makes FINAPP_STATE_DIR, which may be elsewhere.)
mkdir -p .dev
if [ -z "${JWT_SECRET_KEY:-}" ]; then
  [ -s .dev/jwt_secret ] || head -c 48 /dev/urandom | base64 | tr -d '\n' >.dev/jwt_secret
  JWT_SECRET_KEY="$(cat .dev/jwt_secret)"
fi
export JWT_SECRET_KEY
export MONGODB_URI="${MONGODB_URI:-mongodb://127.0.0.1:27017}"
export MONGODB_DATABASE="${MONGODB_DATABASE:-finapp}"
export RABBITMQ_URI="${RABBITMQ_URI:-amqp://guest:guest@127.0.0.1:5672/%2f}"

cargo build --workspace --bins
target/debug/finapp-admin seed-financing-options
cat >&2 <<'HELP'
To create (or promote) an admin, in another shell with the same environment:
  target/debug/finapp-admin create-admin alice   # asks for the password twice, without echo
HELP
# The consumer is event-triggered: under `cargo lambda watch` it runs only when
# invoked, so run it here in its long-running mode to fill user_analytics.
target/debug/notify-consumer >>.dev/notify-consumer.log 2>&1 &
consumer=$!
trap 'kill "$consumer" 2>/dev/null' EXIT
echo "notify-consumer running (pid $consumer, logs in .dev/notify-consumer.log)" >&2
echo "Serving every function on http://localhost:${FINAPP_PORT:-9000} (Ctrl-C to stop)" >&2
cargo lambda watch --invoke-port "${FINAPP_PORT:-9000}"
