#!/bin/bash
# Does a TCP socket connected under BBR (this machine kind's default, which
# new namespaces inherit) and switched to CUBIC after connect keep pacing?
# Two namespaces on a bare veth pair; nftables drops the first SYN-ACK (so the
# client's first RTT sample is ~1 s), then 16 MiB go, with CUBIC set before or
# after connect. Run as root: sudo xtask/scripts/pacing-after-connect.sh
set -e
ip netns del pt-a 2>/dev/null || true; ip netns del pt-b 2>/dev/null || true
ip netns add pt-a; ip netns add pt-b
ip link add pta type veth peer name ptb
ip link set pta netns pt-a; ip link set ptb netns pt-b
ip -n pt-a addr add 198.19.77.1/24 dev pta; ip -n pt-b addr add 198.19.77.2/24 dev ptb
ip -n pt-a link set pta up; ip -n pt-b link set ptb up; ip -n pt-a link set lo up; ip -n pt-b link set lo up
ip netns exec pt-a python3 -c "
import socket
s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR,1); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, b'cubic'); s.bind(('198.19.77.1',9)); s.listen(8)
while True:
    c,_=s.accept()
    while c.recv(1<<20): pass
    c.close()
" &
SRV=$!
sleep 0.5
for mode in after before after before; do
  ip netns exec pt-a nft -f - <<NFT
table inet pt { chain out { type filter hook output priority 0; tcp flags & (syn|ack) == syn|ack drop; }; }
NFT
  (sleep 0.5; ip netns exec pt-a nft delete table inet pt) &
  SL=$!
  ip netns exec pt-b python3 -c "
import socket,time
s=socket.socket()
if '$mode'=='before': s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, b'cubic')
t0=time.time(); s.connect(('198.19.77.1',9)); t1=time.time()
if '$mode'=='after': s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, b'cubic')
b=b'x'*(1<<16)
for i in range(256): s.sendall(b)
s.shutdown(socket.SHUT_WR); s.recv(1); t2=time.time()
print('$mode', s.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16).rstrip(b'\0').decode(), 'connect %.2f s, 16 MiB in %.3f s'%(t1-t0, t2-t1))
"
  wait $SL
done
kill $SRV
ip netns del pt-a; ip netns del pt-b
