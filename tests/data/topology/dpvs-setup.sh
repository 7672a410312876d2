#!/bin/sh -
# DPVS FullNAT two-arm set-up, as in DPVS doc/tutorial.md ("Simple Full-NAT"),
# with documentation addresses.

# add service <VIP:vport> to forwarding, scheduling mode is RR.
./ipvsadm -A -t 203.0.113.100:80 -s rr

# add two RS for service, forwarding mode is FNAT (-b)
./ipvsadm -a -t 203.0.113.100:80 -r 192.0.2.2 -b
./ipvsadm -a -t 203.0.113.100:80 -r 192.0.2.3 -b

# add at least one Local-IP (LIP) for FNAT on LAN interface
./ipvsadm --add-laddr -z 192.0.2.200 -t 203.0.113.100:80 -F dpdk0
./ipvsadm --add-laddr -z 192.0.2.201 -t 203.0.113.100:80 -F dpdk0

# SYN proxy on the service, and a grouped short-option form
./ipvsadm -E -t 203.0.113.100:80 -s rr -j enable
ipvsadm -At 203.0.113.110:80 -s wlc
ipvsadm -at 203.0.113.110:80 -r 203.0.113.21:80 -g -w3

# what a script prints at the end does not change the table
./ipvsadm -ln
./ipvsadm -G
