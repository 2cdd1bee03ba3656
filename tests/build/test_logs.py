"""Kept build logs and the steps view: bounded whatever the build printed, readable back as written."""
from kiln.build.logs import HEAD_BYTES, TAIL_BYTES, BoundedLog, LogBuffer, Steps, appended, kept_text, render_log
from kiln.build.outcomes import REDACTED, redacted

JOB = {"metadata": {"name": "app-g1-abc123-amd64", "namespace": "team", "uid": "u-1",
                    "labels": {"kiln.dev/imagebuild": "app", "kiln.dev/build-id": "g1-abc123", "job-name": "x"},
                    "annotations": {"kiln.dev/platforms": "linux/amd64", "kiln.dev/attempt": "1"}}}


def test_a_log_that_fits_is_kept_whole_and_reads_back_as_written():
    log = BoundedLog(b"#1 [internal] load build definition\n", b"#9 DONE 0.1s\n", 49)
    kept = render_log(JOB, log.text())
    assert kept_text(kept) == "#1 [internal] load build definition\n#9 DONE 0.1s\n"
    assert kept["metadata"]["name"] == "app-g1-abc123-amd64-log"
    assert kept["metadata"]["labels"] == {"kiln.dev/imagebuild": "app", "kiln.dev/build-id": "g1-abc123",
                                          "kiln.dev/build-log": "app-g1-abc123-amd64"}
    assert kept["metadata"]["annotations"] == JOB["metadata"]["annotations"]


def test_a_value_split_by_the_cut_is_redacted_on_both_sides():
    secret = "s3cr3t-Value-123456"
    log = BoundedLog(b"a" * 10 + secret[:8].encode(), secret[8:].encode() + b" end", HEAD_BYTES + TAIL_BYTES + 10)
    text = log.text(lambda part: redacted(part, frozenset({secret})))
    assert secret[:8] not in text and secret[8:] not in text and text.count(REDACTED) == 2
    assert "bytes of the log cut here" in text


def test_a_log_followed_as_it_grows_past_its_bounds_shows_each_line_once_and_says_where_it_skipped():
    """A warm build's running log is kept again and again; a follower prints what each keeping adds."""
    buffer, shown, printed = LogBuffer(), "", []
    lines = [f"#7 {n} line {n}\n".encode() for n in range(40_000)]  # about 700 KiB: past the head and the tail
    for start in range(0, len(lines), 5_000):
        for line in lines[start:start + 5_000]:
            buffer.feed(line)
        text = buffer.bounded().text()
        printed.append(appended(shown, text))
        shown = text
    assert printed[0] == b"".join(lines[:5_000]).decode()  # the first keeping whole
    assert "bytes of the log cut here" in shown  # the keeping lost its middle; the follower, nothing
    assert "".join(printed).splitlines() == [line.decode().rstrip("\n") for line in lines]
    assert appended(shown, shown) == ""


def test_a_follower_that_missed_more_than_the_tail_gets_the_whole_new_tail():
    before = "#1 start\n" + "x\n" * 10
    after = "#1 start\n[kiln: 999 bytes of the log cut here; it had 2000 bytes in all]\n#9 the end\n"
    assert appended(before, after) == "#9 the end\n"


def test_the_steps_view_prints_each_step_once_as_it_completes():
    view = Steps()
    lines = ["#5 [linux/amd64 1/3] FROM r.example/base@sha256:ab", "#5 resolve r.example/base 0.1s done", "#5 DONE 0.2s",
             "#6 [linux/amd64 2/3] RUN make", "#6 0.3 building...", "#7 [linux/amd64 3/3] COPY app /app", "#7 CACHED",
             '#6 ERROR: process "/bin/sh -c make" did not complete successfully: exit code: 2', "#6 DONE 9.9s"]
    assert [out for line in lines if (out := view.feed(line))] == [
        "[linux/amd64 1/3] FROM r.example/base@sha256:ab  DONE 0.2s", "[linux/amd64 3/3] COPY app /app  cached",
        '[linux/amd64 2/3] RUN make  ERROR: process "/bin/sh -c make" did not complete successfully: exit code: 2']
