#!/usr/bin/python3
"""A WebRTC peer for the MCU media tests (aiortc, Debian's python3-aiortc).

Usage: mcu_peer.py publish audio,video | mcu_peer.py subscribe

Speaks JSON lines: the test writes commands to stdin, the peer answers on
stdout. The signaling itself is the test's business; this only does WebRTC.

  publish:   prints {"type":"offer","sdp":...} at start
  {"type":"answer","sdp":...}   -> {"type":"ok"}
  {"type":"offer","sdp":...}    -> {"type":"answer","sdp":...}
  {"type":"reoffer"}            -> {"type":"offer","sdp":...} (renegotiation)
  {"type":"candidate","candidate":{...}} -> {"type":"ok"} (a trickled remote candidate)
  {"type":"stats"}              -> {"type":"stats","frames":{"audio":n,"video":n},
                                    "bytes_sent":n,"packets_received":{"audio":n,"video":n},
                                    "state":...,"video_size":[w,h],"max_video_gap_ms":n}
                                   (video_size: of the last decoded frame;
                                   max_video_gap_ms: the longest time between
                                   two decoded video frames since "reset_gap")
  {"type":"reset_gap"}          -> {"type":"ok"}
  {"type":"quit"}
"""

import asyncio
import json
import sys
import time

import av
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.sdp import candidate_from_sdp
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack


class SmallVideo(VideoStreamTrack):
    """Small frames (160x120) that change every frame, cheap to encode."""

    def __init__(self):
        super().__init__()
        self.n = 0

    async def recv(self):
        pts, time_base = await self.next_timestamp()
        frame = av.VideoFrame(width=160, height=120, format="yuv420p")
        self.n += 1
        for i, plane in enumerate(frame.planes):
            plane.update(bytes([(self.n * (i + 1)) % 256]) * plane.buffer_size)
        frame.pts = pts
        frame.time_base = time_base
        return frame


def out(msg):
    sys.stdout.write(json.dumps(msg) + "\n")
    sys.stdout.flush()


async def main():
    role = sys.argv[1]
    kinds = sys.argv[2].split(",") if len(sys.argv) > 2 else []
    pc = RTCPeerConnection()
    frames = {"audio": 0, "video": 0}
    size = {"width": 0, "height": 0}  # of the last decoded video frame
    gap = {"last": None, "max": 0.0}  # between decoded video frames, seconds

    @pc.on("track")
    def on_track(track):
        async def count():
            while True:
                try:
                    frame = await track.recv()
                except Exception:
                    return
                frames[track.kind] += 1
                if track.kind == "video":
                    size["width"], size["height"] = frame.width, frame.height
                    now = time.monotonic()
                    if gap["last"] is not None:
                        gap["max"] = max(gap["max"], now - gap["last"])
                    gap["last"] = now

        asyncio.ensure_future(count())

    async def offer():
        o = await pc.createOffer()
        await pc.setLocalDescription(o)
        out({"type": "offer", "sdp": pc.localDescription.sdp})

    if role == "publish":
        if "audio" in kinds:
            pc.addTrack(AudioStreamTrack())
        if "video" in kinds:
            pc.addTrack(SmallVideo())
        await offer()

    loop = asyncio.get_event_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        msg = json.loads(line)
        kind = msg.get("type")
        try:
            if kind == "answer":
                await pc.setRemoteDescription(RTCSessionDescription(msg["sdp"], "answer"))
                out({"type": "ok"})
            elif kind == "offer":
                await pc.setRemoteDescription(RTCSessionDescription(msg["sdp"], "offer"))
                a = await pc.createAnswer()
                await pc.setLocalDescription(a)
                out({"type": "answer", "sdp": pc.localDescription.sdp})
            elif kind == "candidate":
                c = msg["candidate"]
                line = c.get("candidate", "")
                if line:
                    cand = candidate_from_sdp(line.split(":", 1)[1])
                    cand.sdpMid = c.get("sdpMid")
                    cand.sdpMLineIndex = c.get("sdpMLineIndex")
                    await pc.addIceCandidate(cand)
                out({"type": "ok"})
            elif kind == "reoffer":
                await offer()
            elif kind == "stats":
                sent = 0
                received = {"audio": 0, "video": 0}
                report = await pc.getStats()
                for s in report.values():
                    if s.type == "outbound-rtp":
                        sent += s.bytesSent
                    elif s.type == "inbound-rtp" and s.kind in received:
                        received[s.kind] += s.packetsReceived
                out({"type": "stats", "frames": frames, "bytes_sent": sent,
                     "packets_received": received, "state": pc.connectionState,
                     "video_size": [size["width"], size["height"]],
                     "max_video_gap_ms": int(gap["max"] * 1000)})
            elif kind == "reset_gap":
                gap["max"] = 0.0
                out({"type": "ok"})
            elif kind == "quit":
                break
        except Exception as e:  # report, do not die: the test reads the error
            out({"type": "error", "error": repr(e)})
    await pc.close()


if __name__ == "__main__":
    asyncio.run(main())
