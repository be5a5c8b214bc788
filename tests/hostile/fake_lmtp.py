"""A hostile or broken LMTP node, for the relay's tests.

usage: fake_lmtp.py HOST PORT MODE STATE_DIR

Listens on HOST:PORT and serves the relay one connection at a time.
MODE says how it misbehaves:
  bad-greeting  greets with b"2\\xff0 ..." (not a reply code)
  poison        a message whose body holds POISON gets a malformed reply
                after its data; others are stored
  hang          a message whose body holds POISON gets no reply at all
                (the connection stays open); others are stored
Writes STATE_DIR/ready once listening, appends one line per connection to
STATE_DIR/connections, each stored message's body to STATE_DIR/stored/N,
and touches STATE_DIR/poison-N each time it sees the poison message's data.
"""
import os
import socket
import sys
import threading

host, port, mode, state = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
os.makedirs(os.path.join(state, "stored"), exist_ok=True)
seen = {"stored": 0, "poison": 0, "conns": 0}
lock = threading.Lock()


def note(name, n):
    with open(os.path.join(state, name), "w") as f:
        f.write(str(n))


def serve(c):
    f = c.makefile("rb")
    w = c.makefile("wb", buffering=0)
    with lock:
        seen["conns"] += 1
        with open(os.path.join(state, "connections"), "a") as log:
            log.write("conn\n")
    if mode == "bad-greeting":
        w.write(b"2\xff0 fake LMTP\r\n")
        c.close()
        return
    w.write(b"220 fake LMTP\r\n")
    rcpts = []
    while True:
        line = f.readline()
        if not line:
            return
        cmd = line.strip().upper()
        if cmd.startswith(b"LHLO"):
            w.write(b"250-fake\r\n250-PIPELINING\r\n250 ENHANCEDSTATUSCODES\r\n")
        elif cmd.startswith(b"MAIL"):
            rcpts = []
            w.write(b"250 2.1.0 ok\r\n")
        elif cmd.startswith(b"RCPT"):
            rcpts.append(cmd)
            w.write(b"250 2.1.5 ok\r\n")
        elif cmd == b"DATA":
            w.write(b"354 go\r\n")
            body = b""
            while True:
                l = f.readline()
                if not l or l == b".\r\n":
                    break
                body += l
            if b"POISON" in body:
                with lock:
                    seen["poison"] += 1
                    note("poison-%d" % seen["poison"], 1)
                if mode == "hang":
                    # Never answer; hold the connection until the peer goes.
                    f.read()
                    return
                # The probe's reply: an id echoed with a folded, non-ASCII
                # continuation, splitting the reply into a line that is not one.
                for _ in rcpts:
                    w.write(b"250 2.1.5 stored <poison.1@probe\r\n x\xe2\x82\xac>\r\n")
                continue
            with lock:
                seen["stored"] += 1
                with open(os.path.join(state, "stored", str(seen["stored"])), "wb") as out:
                    out.write(body)
            for _ in rcpts:
                w.write(b"250 2.1.5 stored\r\n")
        elif cmd == b"QUIT":
            w.write(b"221 bye\r\n")
            return
        elif cmd == b"RSET" or cmd == b"NOOP":
            w.write(b"250 ok\r\n")
        else:
            w.write(b"500 what\r\n")


s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((host, port))
s.listen(16)
note("ready", 1)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
