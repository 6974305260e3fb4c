# Sourced by the test and load scripts: ports chosen free at run time, below the kernel's
# ephemeral range (a port there can be taken at any moment by a socket bound to port 0), at a
# random offset, so that two runs on one machine, or a developer's own callbridge, do not collide.
#
#   free_port VAR               sets VAR to one port free for TCP and UDP on every address
#   free_port_range VAR LEN     sets VAR to "first-last": LEN consecutive free ports (LEN even,
#                               first even: RTP/RTCP pairs), for media.rtp_ports or a relay
# They set a variable rather than print, so that they run in this shell (not a $(...) subshell)
# and remember what they handed out: two calls never return overlapping ports.

# Ports bound now (any state, TCP and UDP, IPv4 and IPv6), one per line, from /proc/net. The hex
# port is converted by hand: strtonum is gawk's, and Debian's awk is mawk (where the call failed
# silently and every port looked free).
ports_in_use() {
    awk 'function hex(s,   i, n) { n = 0; s = toupper(s); for (i = 1; i <= length(s); i++) n = n * 16 + index("0123456789ABCDEF", substr(s, i, 1)) - 1; return n }
         FNR > 1 { n = split($2, local, ":"); print hex(local[n]) }' \
        /proc/net/tcp /proc/net/tcp6 /proc/net/udp /proc/net/udp6 2>/dev/null | sort -un
}

# The first port of the ephemeral range (Linux default 32768 when it cannot be read).
ephemeral_start() {
    local first
    read -r first _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || first=32768
    echo "${first:-32768}"
}

# Ports handed out by this shell already.
_ports_given=""

free_port_range() {
    local var=$1 len=$2 floor=10000 ceiling span tries first last busy
    ((len >= 2 && len % 2 == 0)) || { echo "free_port_range: LEN must be even and >= 2" >&2; return 1; }
    ceiling=$(ephemeral_start)
    span=$((ceiling - floor - len))
    ((span > 0)) || { echo "free_port_range: no room for $len ports below $ceiling" >&2; return 1; }
    busy=$(ports_in_use; tr ' ' '\n' <<<"$_ports_given")
    for ((tries = 0; tries < 50; tries++)); do
        first=$((floor + (RANDOM * 32768 + RANDOM) % span))
        first=$((first - first % 2))
        last=$((first + len - 1))
        if ! awk -v a="$first" -v b="$last" '$1 >= a && $1 <= b { found = 1; exit } END { exit !found }' <<<"$busy"; then
            _ports_given="$_ports_given $(seq -s ' ' "$first" "$last")"
            printf -v "$var" '%s' "$first-$last"
            return 0
        fi
    done
    echo "free_port_range: no free range of $len ports found below $ceiling" >&2
    return 1
}

free_port() {
    local _range
    free_port_range _range 2 || return 1
    printf -v "$1" '%s' "${_range%-*}"
}
