"""Sends one message through an SMTP server and prints every reply line it
got for the data, raw, so that a test can check each is one line.

usage: smtp_send.py HOST PORT FROM RCPT[,RCPT...] MESSAGE_FILE
Prints "data-reply <code> <text>" and exits 0 when the message was taken.
"""
import smtplib
import sys

host, port, sender, rcpts, path = sys.argv[1:6]
msg = open(path, "rb").read()
s = smtplib.SMTP(host, int(port), timeout=30)
s.ehlo()
s.mail(sender)
for r in rcpts.split(","):
    code, text = s.rcpt(r)
    assert code == 250, (r, code, text)
code, text = s.data(msg)
print("data-reply", code, text.decode("utf-8", "replace"))
# The session must still be in step: a NOOP is answered 250.
code, _ = s.noop()
print("noop", code)
s.quit()
sys.exit(0 if code == 250 else 1)
