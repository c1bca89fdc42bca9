"""Crash test with real processes: ringpost relays a ringpost-blast load to a
ringpost-sink and is killed with SIGKILL at random moments, then restarted
on the same spool. Every message that got its 250 must reach the sink
(counted by message id): zero acknowledged messages lost. A message may
reach the sink more than once only across a kill (at most once per process
lifetime; per kill, no more messages again than deliveries can be in flight:
twice the delivery concurrency), and a message may reach the sink without
its 250 only if it was in flight at the kill (at most one per client
connection per round).

Each round is one ringpost lifetime: start (recovering the spool), run a
blast load (8 to 20 connections, message sizes on both sides of the 64 KiB
inline limit, pipelining on or off, early delivery in about one round in
three), kill -9 ringpost after a random delay
(or, in the "first-250" rounds, as soon as a client sees its first 250),
let blast finish and collect the ids it saw accepted. Afterwards ringpost
runs once more until the sink has every accepted id, is stopped cleanly, and
is started again to show that nothing is left to deliver.

Nothing here looks at the spool's files: the test sees only SMTP, the
sink's log of ids and ringpost's exit codes, so it holds for any queue
behind the same interface.

Environment:
  RINGPOST_CRASH_ROUNDS  random-kill rounds (default 20; two first-250
                         rounds come on top)
  RINGPOST_CRASH_SEED    seed of the run (default: random, printed)
  RINGPOST_BIN_DIR       directory of ringpost, ringpost-blast and
                         ringpost-sink (default: the repository's
                         target/release)
"""

import collections
import json
import os
import random
import re
import shutil
import signal
import smtplib
import subprocess
import threading
import time

import pytest

import conftest
from conftest import wait_port
from crashkit import BIN_DIR, SinkLog, blast_problem, wait_for_listening

ROUNDS = int(os.environ.get("RINGPOST_CRASH_ROUNDS") or 20)
SEED_ENV = os.environ.get("RINGPOST_CRASH_SEED")

# Blast load of each round. Sizes on both sides of queue.inline_max_bytes
# (64 KiB by default): inline envelopes and body files.
SIZES = "1k:50,8k:15,60k:5,70k:5,100k:20,300k:5"
KILL_DELAY_MS = (50, 600)
# Blast keeps running this long after the kill (its sessions then fail fast
# on the closed port) so that the kill always falls inside the load.
BLAST_TAIL_MS = 250
PROBE_THREADS = 4
# Delivery concurrency of the server under test (set explicitly: it bounds
# how many deliveries can be in flight at a kill).
SHARDS = 2
DELIVERIES_PER_SHARD = 50
# A message delivered before a kill is delivered again after it only if its
# delivery was in flight: at most the concurrent attempts, plus completions
# not yet on disk; twice the attempts is the allowance per lifetime.
REDELIVERED_PER_KILL_MAX = 2 * SHARDS * DELIVERIES_PER_SHARD

# ringpost log lines not worth showing in a failure message.
ROUTINE = re.compile(
    r"event=(connect|disconnect|helo|queued|removed|commit_stats|shard_ready)\b"
    r"|event=delivery .*status=delivered")


def probe(port, prefix, accepted, first, stop):
    """An SMTP client next to blast that reports its 250s at once (blast
    writes its log only when it ends)."""
    n = 0
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
            s.ehlo("probe.test")
            while not stop.is_set():
                blast_id = f"{prefix}.{n}"
                n += 1
                body = (f"From: <probe@example.org>\r\nTo: <probe@example.net>\r\n"
                        f"Subject: crash probe {blast_id}\r\n"
                        f"Message-ID: <{blast_id}@probe.invalid>\r\nX-Blast-Id: {blast_id}\r\n\r\n"
                        + "probe body line\r\n" * 40).encode()
                s.sendmail("probe@example.org", [f"probe{n % 7}@example.net"], body)
                accepted.append(blast_id)
                first.set()
    except (OSError, smtplib.SMTPException):
        pass


def round_of(blast_id):
    m = re.search(r"-r(\d+)(?:-p\d+)?\.\d+$", blast_id)
    return int(m.group(1)) if m else None


def test_acknowledged_mail_survives_kill_9(ringpost, tmp_path, monkeypatch):
    for tool in ("ringpost", "ringpost-blast", "ringpost-sink"):
        assert (BIN_DIR / tool).is_file(), f"{BIN_DIR / tool} is missing (set RINGPOST_BIN_DIR?)"
    # The conftest's Ringpost starts conftest.RINGPOST: the one of BIN_DIR.
    monkeypatch.setattr(conftest, "RINGPOST", BIN_DIR / "ringpost")

    seed = int(SEED_ENV) if SEED_ENV else random.randrange(1 << 32)
    rng = random.Random(seed)
    # Rounds in which the kill follows the first 250 at once: on the fresh
    # spool and on one with a history.
    first_250_rounds = {0, ROUNDS // 2 + 1}
    total_rounds = ROUNDS + len(first_250_rounds)
    print(f"\ncrash test: seed={seed} rounds={total_rounds} "
          f"(RINGPOST_CRASH_SEED={seed} RINGPOST_CRASH_ROUNDS={ROUNDS} to repeat) bin={BIN_DIR}")
    started = time.monotonic()

    sink_log = SinkLog(tmp_path / "sink-ids.log")
    sink_out = open(tmp_path / "sink.out", "w+")
    sink_err = open(tmp_path / "sink.err", "w")
    sink = subprocess.Popen(
        [str(BIN_DIR / "ringpost-sink"), "--listen", "127.0.0.1:0", "--log-ids", str(sink_log.path),
         "--report-interval", "0s", "--hostname", "sink.test"],
        stdout=sink_out, stderr=sink_err)
    rp = None
    blast = None
    current = {"round": None}

    def context():
        lines = []
        if rp is not None and rp.log_path.exists():
            lines = rp.log_text().splitlines()
        notable = [line for line in lines if not ROUTINE.search(line)]
        return (f"\nseed={seed} round={current['round']} (RINGPOST_CRASH_SEED={seed} "
                f"RINGPOST_CRASH_ROUNDS={ROUNDS})"
                f"\nringpost stderr, notable lines (last 40 of {len(notable)}):\n  "
                + "\n  ".join(notable[-40:])
                + "\nringpost stderr, last 30 lines:\n  " + "\n  ".join(lines[-30:]))

    def fail(message):
        pytest.fail(message + context(), pytrace=False)

    try:
        sink_port = wait_for_listening(sink, sink_out)
        wait_port(sink_port, proc=sink)
        settings = {
            "delivery.smarthost": f"127.0.0.1:{sink_port}",
            "server.shards": str(SHARDS),
            "delivery.max_concurrent_per_shard": str(DELIVERIES_PER_SHARD),
        }
        rounds = []
        accepted = {}  # blast id -> round it got its 250 in

        for r in range(total_rounds):
            current["round"] = r
            first_250 = r in first_250_rounds
            delay_ms = rng.randint(*KILL_DELAY_MS)
            info = {
                "round": r,
                "mode": "first-250" if first_250 else "random",
                "connections": rng.randint(8, 20),
                "mpc": rng.choice([0, 0, 1, 3, 10]),
                "pipelining": rng.choice(["on", "on", "on", "off"]),
                "blast_seed": rng.randrange(1 << 32),
                "run_id": f"crash{seed}-r{r}",
                # Early delivery in some rounds: a 250 then means the sink
                # already has the message, or the commit flushed it.
                "early_ms": rng.choice([0, 0, 2000]),
            }
            try:
                if rp is None:
                    rp = ringpost({**settings, "delivery.early_ms": str(info["early_ms"])})
                else:
                    rp.settings["delivery.early_ms"] = str(info["early_ms"])
                    rp.start()
            except (RuntimeError, TimeoutError) as e:
                fail(f"round {r}: ringpost did not come up on its spool: {e}")

            accepted_path = tmp_path / f"accepted-{r}.log"
            duration_ms = (1500 if first_250 else delay_ms) + BLAST_TAIL_MS
            blast_args = [
                str(BIN_DIR / "ringpost-blast"), f"127.0.0.1:{rp.port}",
                "--duration", f"{duration_ms}ms",
                "--connections", str(info["connections"]),
                "--messages-per-connection", str(info["mpc"]),
                "--pipelining", info["pipelining"],
                "--size", SIZES,
                "--run-id", info["run_id"],
                "--log-accepted", str(accepted_path),
                "--seed", str(info["blast_seed"]),
                "--to", "user{n}@example.net", "--to-count", "50",
                "--timeout", "10s", "--json",
            ]
            probe_accepted, probes = [], []
            first, stop = threading.Event(), threading.Event()
            blast = subprocess.Popen(blast_args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            t0 = time.monotonic()
            if first_250:
                for t in range(PROBE_THREADS):
                    th = threading.Thread(target=probe, daemon=True, args=(
                        rp.port, f"{info['run_id']}-p{t}", probe_accepted, first, stop))
                    th.start()
                    probes.append(th)
                if not first.wait(timeout=10):
                    fail(f"round {r}: no probe message got its 250 within 10 s")
            else:
                time.sleep(max(0.0, t0 + delay_ms / 1000 - time.monotonic()))
            info["kill_ms"] = round((time.monotonic() - t0) * 1000)
            if rp.proc.poll() is not None:
                fail(f"round {r}: ringpost exited by itself with {rp.proc.returncode} before the kill")
            code = rp.stop(signal.SIGKILL)
            if code != -signal.SIGKILL:
                fail(f"round {r}: ringpost exited with {code} before the kill could hit it")
            stop.set()
            try:
                out, err = blast.communicate(timeout=duration_ms / 1000 + 60)
            except subprocess.TimeoutExpired:
                blast.kill()
                blast.communicate()
                fail(f"round {r}: ringpost-blast did not finish")
            rc, blast = blast.returncode, None
            for th in probes:
                th.join(timeout=30)
                assert not th.is_alive(), f"round {r}: a probe client hangs"
            if problem := blast_problem(rc, out, err):
                fail(f"round {r}: ringpost-blast failed: {problem}")
            report = json.loads(out)
            ids = accepted_path.read_text().split()
            assert len(ids) == report["accepted"], (
                f"round {r}: blast logged {len(ids)} accepted ids but counted {report['accepted']}")
            # On a loaded machine the kill may come late; such a round
            # still counts, but most must kill under load (checked below).
            info["under_load"] = report["elapsed_s"] * 1000 > info["kill_ms"]
            for blast_id in ids + probe_accepted:
                assert blast_id not in accepted, f"id {blast_id} accepted twice by blast"
                accepted[blast_id] = r
            info["accepted"] = len(ids) + len(probe_accepted)
            info["probe_accepted"] = len(probe_accepted)
            info["completed"] = report["completed"]
            info["errors"] = sum(report["errors"].values())
            # The killed server's last deliveries reach the sink within
            # moments (blast's tail gave them time): they close this epoch.
            time.sleep(0.05)
            sink_log.mark()
            info["sink_total"] = len(sink_log.ids())
            rounds.append(info)
            print(f"round {r:3d} {info['mode']:9s} kill at {info['kill_ms']:4d} ms  "
                  f"conns={info['connections']:2d} mpc={info['mpc']:2d} pipelining={info['pipelining']:3s} early={info['early_ms']:4d} "
                  f"accepted={info['accepted']:5d} (probe {info['probe_accepted']}) "
                  f"blast errors={info['errors']} sink total={info['sink_total']}"
                  + ("" if info["under_load"] else "  (blast had ended: kill not under load)"))

        # The last lifetime: runs until everything acknowledged is delivered.
        current["round"] = "final"
        try:
            rp.start()
        except (RuntimeError, TimeoutError) as e:
            fail(f"final start: ringpost did not come up on its spool: {e}")
        timeout_s = 60 + 0.5 * total_rounds
        deadline = time.monotonic() + timeout_s
        while True:
            missing = set(accepted) - set(sink_log.ids())
            if not missing:
                break
            if rp.proc.poll() is not None:
                fail(f"final: ringpost exited with {rp.proc.returncode} with {len(missing)} "
                     f"acknowledged messages undelivered")
            if time.monotonic() > deadline:
                fail(lost_message(missing, accepted, rounds, timeout_s))
            time.sleep(0.1)
        # Let what was stored without its 250 go out too, then the queue
        # empties: by `ringpost queue stats` when there is one, else by a
        # quiet sink.
        queue_live = wait_queue_drained(rp, sink_log, fail)
        code = rp.stop(signal.SIGTERM)
        if code != 0:
            fail(f"final: ringpost exited with {code} on SIGTERM")
        sink_log.mark()
        # After a clean stop a restart finds nothing to deliver.
        current["round"] = "after clean stop"
        try:
            rp.start()
        except (RuntimeError, TimeoutError) as e:
            fail(f"restart after clean stop: ringpost did not come up: {e}")
        time.sleep(1.5)
        code = rp.stop(signal.SIGTERM)
        if code != 0:
            fail(f"restart after clean stop: ringpost exited with {code} on SIGTERM")
        sink_log.mark()

        # The books.
        current["round"] = "accounting"
        sink_ids = sink_log.ids()
        epochs = collections.defaultdict(list)  # id -> epoch of each delivery
        for i, blast_id in enumerate(sink_ids):
            epochs[blast_id].append(sink_log.epoch_of(i))
        final_epoch, after_clean_epoch = total_rounds, total_rounds + 1

        lost = set(accepted) - set(epochs)
        if lost:
            fail(lost_message(lost, accepted, rounds, timeout_s))
        strangers = sorted(i for i in epochs if round_of(i) is None or not i.startswith(f"crash{seed}-"))
        if strangers:
            fail(f"the sink received ids no client of this run sent: {strangers[:20]}")
        same_epoch = {i: e for i, e in epochs.items() if len(set(e)) != len(e)}
        if same_epoch:
            fail(f"{len(same_epoch)} messages delivered twice within one ringpost lifetime "
                 f"(no kill in between), id: epochs of its deliveries: "
                 + ", ".join(f"{i}: {e}" for i, e in sorted(same_epoch.items())[:20]))
        after_clean = sorted(i for i, e in epochs.items() if after_clean_epoch in e)
        if after_clean:
            fail(f"{len(after_clean)} messages delivered after a clean stop and restart "
                 f"(the queue was not empty): " + ", ".join(
                     f"{i}: epochs {epochs[i]}" for i in after_clean[:20]))
        unacked = sorted((i for i in epochs if i not in accepted), key=lambda i: (round_of(i), i))
        unacked_per_round = collections.Counter(round_of(i) for i in unacked)
        for r, n in sorted(unacked_per_round.items()):
            info = rounds[r]
            bound = info["connections"] + (PROBE_THREADS if info["mode"] == "first-250" else 0)
            if n > bound:
                fail(f"round {r}: {n} messages delivered without a 250, more than the {bound} "
                     f"connections that can have one in flight at the kill: "
                     + ", ".join(i for i in unacked if round_of(i) == r)[:2000])
        duplicates = {i: e for i, e in epochs.items() if len(e) > 1}
        extra = sum(len(e) - 1 for e in duplicates.values())
        # Redelivered after the kill that ended lifetime e: delivered in e
        # and again later. Only what was in flight at that kill.
        redelivered = collections.Counter(
            e for deliveries in duplicates.values() for e in sorted(set(deliveries))[:-1])
        (tmp_path / "epochs.json").write_text(json.dumps({"marks": sink_log.marks, "rounds": rounds}))
        too_many = {e: n for e, n in redelivered.items() if n > REDELIVERED_PER_KILL_MAX}
        if too_many:
            fail("more messages delivered again after a kill than can have been in flight at it "
                 f"(at most {REDELIVERED_PER_KILL_MAX}: {SHARDS} shards x {DELIVERIES_PER_SHARD} "
                 "delivery attempts, doubled for completions not yet on disk), lifetime: "
                 "redelivered/delivered in it: " + ", ".join(
                     f"{e}: {n}/{sum(1 for d in epochs.values() if e in d)}"
                     for e, n in sorted(too_many.items())))

        elapsed = time.monotonic() - started
        total_accepted = len(accepted)
        print(f"crash test: seed={seed} rounds={total_rounds} accepted={total_accepted} "
              f"delivered ids={len(epochs)} deliveries={len(sink_ids)} lost=0 "
              f"duplicated ids={len(duplicates)} (extra deliveries {extra}) "
              f"delivered without 250={len(unacked)} "
              f"queue live at the end={queue_live if queue_live is not None else 'n/a'} "
              f"in final lifetime={sum(1 for e in epochs.values() if final_epoch in e)} "
              f"elapsed={elapsed:.1f} s")
        if duplicates:
            print("duplicates (id: lifetimes it was delivered in): " + ", ".join(
                f"{i}: {e}" for i, e in sorted(duplicates.items(), key=lambda kv: kv[1])[:30])
                + (" ..." if len(duplicates) > 30 else ""))
            print("redelivered after the kill ending lifetime (lifetime: count): " + " ".join(
                f"{e}:{n}" for e, n in sorted(redelivered.items())))
        if unacked:
            print("delivered without a 250 (in flight at a kill): " + ", ".join(unacked[:30])
                  + (" ..." if len(unacked) > 30 else ""))
        # The test must have tested something.
        assert total_accepted >= 10 * total_rounds, f"only {total_accepted} messages accepted in all"
        assert sum(1 for info in rounds if info["accepted"] > 0) >= total_rounds * 3 // 4, \
            "most rounds must get messages accepted before the kill"
        assert sum(1 for info in rounds if info["under_load"]) >= total_rounds * 3 // 4, \
            "most kills must come while blast is running (is the machine overloaded?)"
        # Passed: the spool (its segments are allocated in full) goes.
        shutil.rmtree(rp.spool, ignore_errors=True)
    finally:
        if blast is not None and blast.poll() is None:
            blast.kill()
            blast.wait()
        if sink.poll() is None:
            sink.terminate()
            try:
                sink.wait(timeout=10)
            except subprocess.TimeoutExpired:
                sink.kill()
                sink.wait()
        sink_out.close()
        sink_err.close()


def wait_queue_drained(rp, sink_log, fail, timeout_s=30):
    """Waits until `ringpost queue stats` shows no live message (returns that
    count) or, without a usable `queue stats`, until the sink has been quiet
    for a second (returns None)."""
    deadline = time.monotonic() + timeout_s
    live = None
    while time.monotonic() < deadline:
        try:
            live = rp.queue_live()
        except (subprocess.CalledProcessError, IndexError, ValueError, KeyError, OSError):
            break
        if live == 0:
            return 0
        time.sleep(0.2)
    else:
        fail(f"final: the queue still has {live} live messages {timeout_s} s after every "
             f"acknowledged message was delivered")
    count, quiet_since = len(sink_log.ids()), time.monotonic()
    while time.monotonic() - quiet_since < 1.0 and time.monotonic() < deadline:
        time.sleep(0.1)
        now = len(sink_log.ids())
        if now != count:
            count, quiet_since = now, time.monotonic()
    return None


def lost_message(missing, accepted, rounds, timeout_s):
    by_round = collections.Counter(accepted[i] for i in missing)
    sample = sorted(missing, key=lambda i: (accepted[i], i))[:50]
    return (f"LOST: {len(missing)} of {len(accepted)} acknowledged messages never reached the sink "
            f"({timeout_s:.0f} s after the final restart). Missing per round (round: missing/accepted): "
            + ", ".join(f"{r}: {n}/{rounds[r]['accepted']} (kill at {rounds[r]['kill_ms']} ms, "
                        f"{rounds[r]['mode']})" for r, n in sorted(by_round.items()))
            + f"\nmissing ids (first 50): {' '.join(sample)}")
