# corral's guest network set-up: sourced once by init.sh (guest/init.sh), before "ready".
#
# The host gives a VM a NIC only for a job with network (runtime.py, vm.py): one virtio-net device
# behind qemu's user-mode stack (-netdev user, ipv4 only, no hostfwd/smb/tftp), whose sockets are
# qemu's own, opened in the job's network namespace, so the egress firewall there applies to every
# connection the guest makes. The host names the guest's address, gateway and resolver on the
# kernel command line (`corral.net=ADDR/LEN,GATEWAY,DNS`, see vm.py): static, no DHCP client,
# nothing in the guest listens or waits. A VM without a NIC (no network, the default, and every
# warm VM) gets only its loopback.
#
# Defines `net_root ROOT` for init's step functions: the step's /etc/resolv.conf names DNS (a no-op
# without a NIC, so an image's own resolv.conf stays as it is).

NET_IF= NET_DNS= NET_CONF=
for _w in $(cat /proc/cmdline); do
    case "$_w" in corral.net=*) NET_CONF=${_w#corral.net=} ;; esac
done
for _d in /sys/class/net/*; do
    [ "${_d##*/}" = lo ] || { NET_IF=${_d##*/}; break; }
done
ip link set lo up 2>/dev/null
if [ -n "$NET_IF" ] && [ -e "/sys/class/net/$NET_IF" ] && [ -n "$NET_CONF" ]; then
    _addr=${NET_CONF%%,*} _rest=${NET_CONF#*,}
    _gw=${_rest%%,*} NET_DNS=${_rest#*,}
    { ip addr add "$_addr" dev "$NET_IF" && ip link set "$NET_IF" up \
        && ip route add default via "$_gw"; } || die "cannot configure the network ($NET_IF $NET_CONF)"
else
    NET_IF=
fi

net_root() {
    [ -n "$NET_IF" ] || return 0
    # the image's /etc and /etc/resolv.conf are the job's: a symlink there would make init (root,
    # outside the chroot) write wherever it points, so whatever is there is replaced, in the
    # step's own writable layer
    if [ -L "$1/etc" ] || [ ! -d "$1/etc" ]; then
        rm -rf "$1/etc" && mkdir -p "$1/etc" || die "cannot make /etc for the network"
    fi
    rm -rf "$1/etc/resolv.conf" || die "cannot replace /etc/resolv.conf"
    printf 'nameserver %s\noptions ndots:0\n' "$NET_DNS" > "$1/etc/resolv.conf" \
        || die "cannot write /etc/resolv.conf"
    chmod 644 "$1/etc/resolv.conf"
}
