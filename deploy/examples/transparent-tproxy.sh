#!/bin/sh
# Transparent mode with TPROXY and the client's own source address toward the backend
# (listener keys transparent: true, transparent_source: true). The backend then sees the real
# client as its TCP peer, so it needs no forwarding support at all; in exchange the return
# traffic from the backend to the client's address must come back through this router and be
# delivered to Portcullis' socket.
#
# Portcullis needs CAP_NET_ADMIN for IP_TRANSPARENT (systemd: AmbientCapabilities=
# CAP_NET_ADMIN CAP_NET_BIND_SERVICE); the listener sockets get IP_TRANSPARENT too.
set -eu
CLIENT_IF=${CLIENT_IF:-eth1}      # toward the clients
SERVER_IF=${SERVER_IF:-eth2}      # toward the mail servers

sysctl -q -w net.ipv4.ip_forward=1
# 1. New client connections to any address on 143/110 go to Portcullis' listeners.
iptables -t mangle -A PREROUTING -i "$CLIENT_IF" -p tcp --dport 143 \
    -j TPROXY --on-port 10143 --on-ip 0.0.0.0 --tproxy-mark 0x1/0x1
iptables -t mangle -A PREROUTING -i "$CLIENT_IF" -p tcp --dport 110 \
    -j TPROXY --on-port 10110 --on-ip 0.0.0.0 --tproxy-mark 0x1/0x1
# 2. Replies from the servers to a client address that belong to one of Portcullis' sockets.
iptables -t mangle -A PREROUTING -i "$SERVER_IF" -p tcp -m socket --transparent \
    -j MARK --set-mark 0x1/0x1
# 3. Marked packets are delivered locally.
ip rule add fwmark 0x1/0x1 lookup 100
ip route add local 0.0.0.0/0 dev lo table 100
# The mail servers' route to the client networks must point at this router.
# IPv6: the same with ip6tables (TPROXY --on-ip ::), ip -6 rule add fwmark 0x1/0x1 lookup 100,
# ip -6 route add local ::/0 dev lo table 100, and listeners bound to "[::]:10143"/"[::]:10110".
