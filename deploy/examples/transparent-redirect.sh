#!/bin/sh
# Transparent mode with REDIRECT: Portcullis runs on the router between the clients and the
# mail servers; clients keep connecting to their mail server's address and port, the router
# hands those connections to Portcullis, which reads the original destination (SO_ORIGINAL_DST)
# and proxies — and scans — the session there. The backend sees the router's address (and the
# client's, through IMAP ID / POP3 XCLIENT, if it trusts the router).
#
# portcullis.yaml:
#   listeners:
#     - { name: t-imap, bind: "0.0.0.0:10143", protocol: imap, tls: none, transparent: true }
#     - { name: t-pop3, bind: "0.0.0.0:10110", protocol: pop3, tls: none, transparent: true }
#     - { name: t-imap6, bind: "[::]:10143", protocol: imap, tls: none, transparent: true }
#     - { name: t-pop36, bind: "[::]:10110", protocol: pop3, tls: none, transparent: true }
#   allow_plaintext_auth: true   # the clients speak plaintext to port 143/110 today
# (Implicit TLS ports 993/995 cannot be intercepted transparently: the client would have to
# accept Portcullis' certificate for the mail server's name.)
set -eu
CLIENT_IF=${CLIENT_IF:-eth1}      # the interface the mail clients are behind

sysctl -q -w net.ipv4.ip_forward=1
iptables -t nat -A PREROUTING -i "$CLIENT_IF" -p tcp --dport 143 -j REDIRECT --to-ports 10143
iptables -t nat -A PREROUTING -i "$CLIENT_IF" -p tcp --dport 110 -j REDIRECT --to-ports 10110
# IPv6 (Portcullis reads IP6T_SO_ORIGINAL_DST):
sysctl -q -w net.ipv6.conf.all.forwarding=1
ip6tables -t nat -A PREROUTING -i "$CLIENT_IF" -p tcp --dport 143 -j REDIRECT --to-ports 10143
ip6tables -t nat -A PREROUTING -i "$CLIENT_IF" -p tcp --dport 110 -j REDIRECT --to-ports 10110
# nftables equivalent:
#   table inet portcullis { chain prerouting { type nat hook prerouting priority dstnat;
#     iifname "eth1" tcp dport 143 redirect to :10143
#     iifname "eth1" tcp dport 110 redirect to :10110 } }
