# A tiny app for the container runtime's tests (run by busybox sh in a FROM scratch image):
# serves $PORT with busybox httpd, logs every signal it gets, and behaves as its first argument says:
#   serve        exit 7 on SIGUSR1, 0 on SIGTERM/SIGINT/SIGHUP (after logging "got SIG…")
#   stubborn     logs signals but never exits on them (only a kill ends it)
#   exit N       exits N at once
#   tick         prints "tick N" every 50 ms (log-follower tests)
#   other P      serves on port P instead of $PORT (the listening diagnosis)
mode="${1:-serve}"
echo "up mode=$mode PORT=$PORT GREETING=${GREETING:-}"
if [ "$mode" = exit ]; then exit "$2"; fi
port="$PORT"
if [ "$mode" = other ]; then port="$2"; fi
mkdir -p /www && echo "hello from sigapp" > /www/index.html
httpd -f -p "$port" -h /www &
server=$!
got() {
    echo "got $1"
    if [ "$mode" = stubborn ]; then return; fi
    kill "$server"
    exit "$2"
}
trap 'got SIGTERM 0' TERM
trap 'got SIGINT 0' INT
trap 'got SIGHUP 0' HUP
trap 'got SIGUSR1 7' USR1
echo ready
n=0
while :; do
    if [ "$mode" = tick ]; then n=$((n + 1)); echo "tick $n"; fi
    sleep 0.05 &
    wait $!
done
