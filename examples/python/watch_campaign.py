#!/usr/bin/env python3
"""Create a Broadside campaign, start it, and follow it to the end.

The script:

1. creates a DRAFT campaign of N distinct recipients whose body uses a
   `{{name}}` placeholder (CreateCampaign),
2. opens a WatchCampaign stream and, once the first update (the current
   counts) has arrived, starts the campaign (StartCampaign), so the stream
   shows the whole run, DRAFT to COMPLETED,
3. prints one line per update until the server ends the stream,
4. audits the result with GetCampaignStatus.

It exits 0 only if the stream ended by itself on COMPLETED, its sequence
numbers rose strictly, no count ever went down, the last update's counts equal
the counts GetCampaignStatus aggregates from the message rows, the server says
those agree with the stored counts, and every recipient was sent. Anything
else, including running out of time, exits 1.

Run `generate.sh` first; it writes the stubs this script imports to ./gen.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path

GEN_DIR = Path(__file__).resolve().parent / "gen"
sys.path.insert(0, str(GEN_DIR))

import grpc  # noqa: E402

try:
    from broadside.v1 import campaign_pb2 as pb  # noqa: E402
    from broadside.v1 import campaign_pb2_grpc as pb_grpc  # noqa: E402
except ImportError as error:  # pragma: no cover - depends on the checkout
    sys.exit(
        f"cannot import the generated stubs from {GEN_DIR} ({error}); "
        "run examples/python/generate.sh first"
    )

# Inline recipients CreateCampaign accepts in one call (see campaign.proto).
MAX_INLINE_RECIPIENTS = 10_000
# Counts that may only grow while a campaign runs. `queued` shrinks.
MONOTONIC_FIELDS = ("total", "sent", "failed", "processed", "cancelled")
COUNT_FIELDS = ("total", "queued", "sent", "failed", "processed", "cancelled")
TERMINAL_STATES = (pb.CAMPAIGN_STATE_COMPLETED, pb.CAMPAIGN_STATE_CANCELLED)


class CheckFailed(Exception):
    """The campaign did not behave as the API promises."""


class Deadline:
    """One time budget shared by every call the script makes."""

    def __init__(self, seconds: float) -> None:
        self._end = time.monotonic() + seconds

    def remaining(self) -> float:
        left = self._end - time.monotonic()
        if left <= 0:
            raise CheckFailed("ran out of time (see --timeout)")
        return left


def state_name(state: int) -> str:
    return pb.CampaignState.Name(state).removeprefix("CAMPAIGN_STATE_")


def counts_tuple(counts: pb.CampaignCounts) -> tuple[int, ...]:
    return tuple(getattr(counts, field) for field in COUNT_FIELDS)


def describe_counts(counts: pb.CampaignCounts) -> str:
    return " ".join(f"{field}={getattr(counts, field)}" for field in COUNT_FIELDS)


def phone_number(index: int) -> str:
    """A distinct, valid San Francisco number per index: +1 415 2xx xxxx."""
    return f"+1415{2_000_000 + index:07d}"


def positive_int(text: str) -> int:
    value = int(text)
    if not 1 <= value <= MAX_INLINE_RECIPIENTS:
        raise argparse.ArgumentTypeError(
            f"must be between 1 and {MAX_INLINE_RECIPIENTS}"
        )
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be greater than 0")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Create a campaign, start it and watch it complete.",
    )
    parser.add_argument(
        "--server",
        default="127.0.0.1:50051",
        help="Broadside gRPC address, host:port (default: %(default)s)",
    )
    parser.add_argument(
        "--recipients",
        type=positive_int,
        default=500,
        metavar="N",
        help="recipients in the campaign, 1 to 10000 (default: %(default)s)",
    )
    parser.add_argument(
        "--timeout",
        type=positive_float,
        default=120.0,
        metavar="SECONDS",
        help="give up after this long, all calls included (default: %(default)s)",
    )
    return parser.parse_args(argv)


def create_campaign(
    stub: pb_grpc.CampaignServiceStub, recipients: int, deadline: Deadline
) -> pb.Campaign:
    request = pb.CreateCampaignRequest(
        name=f"Python watch example ({recipients} recipients)",
        body="Hi {{name}}, this is a test message from the Broadside Python example.",
        sender="Broadside",
        # Lets the call be retried safely; a replay returns the same campaign.
        request_id=f"python-watch-example-{uuid.uuid4()}",
        recipients=[
            pb.Recipient(phone=phone_number(i), variables={"name": f"guest {i + 1}"})
            for i in range(recipients)
        ],
    )
    response = stub.CreateCampaign(request, timeout=deadline.remaining())
    campaign = response.campaign
    print(
        f"created campaign {campaign.id} ({state_name(campaign.state)}): "
        f"{response.accepted} accepted, {len(response.rejected)} rejected, "
        f"{response.duplicates} duplicates"
    )
    for rejected in response.rejected[:5]:
        print(f"  rejected #{rejected.index} {rejected.phone}: {rejected.reason}")
    if response.accepted != recipients or response.rejected or response.duplicates:
        raise CheckFailed(
            f"expected all {recipients} recipients to be accepted, got "
            f"{response.accepted} accepted, {len(response.rejected)} rejected, "
            f"{response.duplicates} duplicates"
        )
    if campaign.state != pb.CAMPAIGN_STATE_DRAFT:
        raise CheckFailed(f"new campaign is {state_name(campaign.state)}, not DRAFT")
    return campaign


def watch_until_done(
    stub: pb_grpc.CampaignServiceStub, campaign_id: str, deadline: Deadline
) -> list[pb.WatchCampaignResponse]:
    """Watches the campaign, starting it after the first update.

    Returns every update received. Raises CheckFailed when an update breaks
    a promise of the API, or grpc.RpcError when the stream fails.
    """
    updates: list[pb.WatchCampaignResponse] = []
    stream = stub.WatchCampaign(
        pb.WatchCampaignRequest(campaign_id=campaign_id),
        timeout=deadline.remaining(),
    )
    try:
        for update in stream:
            print(
                f"#{update.sequence:<4} {state_name(update.state):<10} "
                f"processed {update.counts.processed:>6}/{update.counts.total:<6} "
                f"sent {update.counts.sent:>6}  failed {update.counts.failed:>4}  "
                f"rate {update.rate_per_second:8.1f}/s",
                flush=True,
            )
            check_update(update, updates[-1] if updates else None, campaign_id)
            updates.append(update)
            if len(updates) == 1:
                # The watch is now registered on the server, so starting here
                # lets the stream show the campaign from its very first send.
                started = stub.StartCampaign(
                    pb.StartCampaignRequest(campaign_id=campaign_id),
                    timeout=deadline.remaining(),
                )
                print(f"started campaign ({state_name(started.campaign.state)})")
    finally:
        stream.cancel()  # a no-op once the stream has ended
    return updates


def check_update(
    update: pb.WatchCampaignResponse,
    previous: pb.WatchCampaignResponse | None,
    campaign_id: str,
) -> None:
    counts = update.counts
    if update.campaign_id != campaign_id:
        raise CheckFailed(f"update for campaign {update.campaign_id!r}, not {campaign_id}")
    if counts.processed != counts.sent + counts.failed:
        raise CheckFailed(f"update #{update.sequence}: processed != sent + failed "
                          f"({describe_counts(counts)})")
    if counts.queued != counts.total - counts.processed - counts.cancelled:
        raise CheckFailed(f"update #{update.sequence}: queued != total - processed - "
                          f"cancelled ({describe_counts(counts)})")
    if previous is None:
        if update.sequence != 1:
            raise CheckFailed(f"first update has sequence {update.sequence}, not 1")
        return
    if previous.state in TERMINAL_STATES:
        raise CheckFailed(f"update #{update.sequence} arrived after the terminal "
                          f"state {state_name(previous.state)}")
    if update.sequence <= previous.sequence:
        raise CheckFailed(f"sequence went from {previous.sequence} to {update.sequence}")
    for field in MONOTONIC_FIELDS:
        before, after = getattr(previous.counts, field), getattr(counts, field)
        if after < before:
            raise CheckFailed(f"update #{update.sequence}: {field} went down "
                              f"from {before} to {after}")


def audit(
    stub: pb_grpc.CampaignServiceStub,
    campaign_id: str,
    updates: list[pb.WatchCampaignResponse],
    recipients: int,
    deadline: Deadline,
) -> None:
    if not updates:
        raise CheckFailed("the stream ended without a single update")
    last = updates[-1]
    if last.state != pb.CAMPAIGN_STATE_COMPLETED:
        raise CheckFailed(f"the stream ended on {state_name(last.state)}, not COMPLETED")

    status = stub.GetCampaignStatus(
        pb.GetCampaignStatusRequest(campaign_id=campaign_id),
        timeout=deadline.remaining(),
    )
    print(f"status: state={state_name(status.state)} consistent={status.consistent}")
    print(f"  stored:      {describe_counts(status.counts)}")
    print(f"  aggregated:  {describe_counts(status.aggregated)}")
    print(f"  last update: {describe_counts(last.counts)}")

    if status.state != pb.CAMPAIGN_STATE_COMPLETED:
        raise CheckFailed(f"GetCampaignStatus says {state_name(status.state)}, not COMPLETED")
    if not status.consistent:
        raise CheckFailed("GetCampaignStatus says stored and aggregated counts disagree")
    if counts_tuple(last.counts) != counts_tuple(status.aggregated):
        raise CheckFailed("the last update's counts differ from the aggregated counts")
    if status.aggregated.total != recipients or status.aggregated.sent != recipients:
        raise CheckFailed(f"expected {recipients} sent of {recipients}, got "
                          f"{status.aggregated.sent} sent of {status.aggregated.total}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    deadline = Deadline(args.timeout)
    campaign_id = "(not created)"
    updates: list[pb.WatchCampaignResponse] = []
    with grpc.insecure_channel(args.server) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=min(deadline.remaining(), 15))
        except grpc.FutureTimeoutError:
            print(f"FAIL: cannot reach a gRPC server at {args.server}", file=sys.stderr)
            return 1
        stub = pb_grpc.CampaignServiceStub(channel)
        try:
            campaign_id = create_campaign(stub, args.recipients, deadline).id
            updates = watch_until_done(stub, campaign_id, deadline)
            audit(stub, campaign_id, updates, args.recipients, deadline)
        except CheckFailed as failure:
            print(f"FAIL: campaign {campaign_id}: {failure}", file=sys.stderr)
            return 1
        except grpc.RpcError as error:
            print(
                f"FAIL: campaign {campaign_id}: {error.code().name}: {error.details()}",
                file=sys.stderr,
            )
            return 1
    last = updates[-1].counts
    print(
        f"OK: campaign {campaign_id} completed: {last.sent} sent, "
        f"{last.failed} failed, {len(updates)} updates"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
