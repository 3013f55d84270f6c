"""Power loss (security case 54): what strictmxd acknowledged survives a power cut.

strictmxd runs with its data_dir on losefs (tests/integration/losefs.py), a FUSE file
system that keeps, besides the files every process sees, the picture a power cut would
leave: file contents as of their last fsync, directory entries as of their directory's
last fsync. A client sends mail over STARTTLS, one message per session, and records the
Message-IDs that got "250 ... queued as"; at a random moment after some were delivered
the daemon is killed (SIGKILL) and the file system unmounted, which writes the after-cut
picture to a new directory. strictmxd is started again on that directory (an ordinary
file system) and must deliver every acknowledged message, complete, to the Maildir,
without finding a damaged queue entry. Duplicates are allowed (SMTP's at-least-once):
a message delivered before the cut whose queue rows' deletion was not yet durable is
delivered again; they are counted, not failed.

This is stricter than a process crash (test_crash.py), where the page cache survives: a
write that was never fsync'd, or a file whose directory was never fsync'd, is gone here.
ROUNDS cuts at different moments (SMX_POWER_SEED replays a schedule).
"""
import os
import random
import re
import shutil
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import smxtest  # noqa: E402

ROUNDS = 3
MID_RE = re.compile(rb"^message-id:\s*<([^>]+)>", re.I | re.M)


class PowerLoss(unittest.TestCase):
    def setUp(self):
        why = smxtest.fuse_missing()
        if why:
            # make deps-test installs both; only a machine without FUSE gets here
            self.skipTest(why)

    def test_power_cut_loses_nothing_acknowledged(self):
        seed = int(os.environ.get("SMX_POWER_SEED", str(int(time.time()))))
        print("power-loss seed %d (SMX_POWER_SEED replays it)" % seed)
        rnd = random.Random(seed)
        for r in range(ROUNDS):
            with self.subTest(round=r):
                self.one_round(r, rnd)

    def one_round(self, r, rnd):
        fs = smxtest.LoseFs(self)
        mnt, out = fs.mnt, fs.out

        d = smxtest.Daemon.with_config("", data_dir=mnt)
        acked, stop, why = [], threading.Event(), []

        def sender():
            i = 0
            while not stop.is_set() and i < 400:
                name = "powercut_%d_%d" % (r, i)
                try:
                    rep = smxtest.send_mail(d.port, name, body_lines=("end of " + name,))
                except Exception as e:
                    why.append(repr(e))  # the daemon is gone (or never worked)
                    return
                if rep.code == 250:
                    acked.append(name + "@client.example")
                i += 1

        t = threading.Thread(target=sender, daemon=True)
        t.start()
        # some mail accepted and some delivered, then the cut at a random moment
        want = 4 + 4 * r
        self.assertTrue(smxtest.poll(lambda: len(acked) >= want or why, 90) and not why,
                        "only %d messages accepted: %s\n%s"
                        % (len(acked), why, d.log_text()[-2000:]))
        self.assertTrue(smxtest.poll(lambda: len(d.mail_files("example.org", "u")) >= 2, 60))
        time.sleep(rnd.uniform(0.0, 0.6))
        d.proc.kill()
        d.proc.wait(20)
        n_acked = len(acked)
        stop.set()
        t.join(60)
        d._stopped = True
        d._log.close()
        shutil.rmtree(d.tmp, ignore_errors=True)

        # the power cut: losefs writes what would have survived into out
        self.assertTrue(fs.unmount(), fs.log_text())
        acked = acked[:n_acked]  # a 250 read after the kill cannot exist; be exact anyway

        d2 = smxtest.Daemon.with_config("", data_dir=out)
        self.addCleanup(d2.stop)

        def delivered():
            seen = {}
            for f in d2.mail_files("example.org", "u"):
                with open(f, "rb") as fh:
                    raw = fh.read()
                m = MID_RE.search(raw)
                if m:
                    mid = m.group(1).decode()
                    name = mid.split("@")[0]
                    complete = ("end of " + name).encode() in raw
                    seen.setdefault(mid, []).append(complete)
            return seen

        ok = smxtest.poll(lambda: set(acked) <= set(delivered()), 60)
        seen = delivered()
        lost = [m for m in acked if m not in seen]
        self.assertTrue(ok and not lost, "round %d: %d of %d acknowledged messages lost: %s\n%s"
                        % (r, len(lost), len(acked), lost[:10], d2.log_text()[-3000:]))
        cut = [m for m, c in seen.items() if not all(c)]
        self.assertEqual(cut, [], "messages delivered incomplete")
        log = d2.log_text()
        for bad in ("event=queue_corrupt", "event=queue_quarantine"):
            self.assertNotIn(bad, log)
        dups = sum(len(v) - 1 for v in seen.values())
        print("round %d: %d acknowledged, all delivered after the cut; %d duplicates"
              % (r, len(acked), dups))


if __name__ == "__main__":
    unittest.main()
