#!/usr/bin/python3
"""A simulcast WebRTC publisher for the MCU media tests: Debian's headless
`chromium` with its fake camera, driven over the DevTools protocol
(`--remote-debugging-pipe`, so no port and no WebSocket client needed).

Usage: mcu_chrome_peer.py publish WIDTHxHEIGHT [PROFILE_DIR]

PROFILE_DIR (chromium's profile, the page, chromium.log) should be made and
removed by the caller: the test kills this helper with SIGKILL (chromium
follows, PR_SET_PDEATHSIG). Without it a temporary directory is used.

Speaks the JSON-lines protocol of mcu_peer.py (stdin commands, stdout
answers):

  prints {"type":"offer","sdp":...} at start: one video transceiver,
      sendonly, rid simulcast h (full size), m (1/2), l (1/4), each
      L1T3 (three VP8 temporal layers); ICE gathering complete, so the
      candidates are in the SDP
  {"type":"answer","sdp":...}   -> {"type":"ok"}
  {"type":"candidate","candidate":{...}} -> {"type":"ok"}
  {"type":"stats"}              -> {"type":"stats","state":...,
                                    "layers":{"h":{"width":..,"height":..,
                                    "frames":..,"bytes":..,"limit":..},...}}
  {"type":"quit"}

Errors are reported as {"type":"error","error":...}.
"""

import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

PAGE = """<!doctype html><html><body><script>
let pc;
async function start(width, height) {
  const media = await navigator.mediaDevices.getUserMedia({video: {
    width: {exact: width}, height: {exact: height}, frameRate: {ideal: 30}}});
  const track = media.getVideoTracks()[0];
  // Keep the resolution under CPU pressure (drop frames instead): the
  // test looks at the layers' sizes.
  track.contentHint = 'detail';
  pc = new RTCPeerConnection({bundlePolicy: 'max-bundle'});
  const t = pc.addTransceiver(track, {direction: 'sendonly', sendEncodings: [
    {rid: 'h', scalabilityMode: 'L1T3'},
    {rid: 'm', scaleResolutionDownBy: 2, scalabilityMode: 'L1T3'},
    {rid: 'l', scaleResolutionDownBy: 4, scalabilityMode: 'L1T3'},
  ]});
  const p = t.sender.getParameters();
  p.degradationPreference = 'maintain-resolution';
  try { await t.sender.setParameters(p); } catch (e) {}
  // VP8 only: what the Janus room and the subscriber decode.
  const vp8 = RTCRtpSender.getCapabilities('video').codecs.filter(
    c => /vp8|rtx/i.test(c.mimeType));
  t.setCodecPreferences(vp8);
  const done = new Promise(r => {
    pc.onicegatheringstatechange = () => {
      if (pc.iceGatheringState === 'complete') r();
    };
  });
  await pc.setLocalDescription(await pc.createOffer());
  if (pc.iceGatheringState !== 'complete') await done;
  return pc.localDescription.sdp;
}
async function answer(sdp) {
  await pc.setRemoteDescription({type: 'answer', sdp});
  return 'ok';
}
async function candidate(c) {
  if (c.candidate) await pc.addIceCandidate(c);
  return 'ok';
}
async function stats() {
  const layers = {};
  (await pc.getStats()).forEach(s => {
    if (s.type === 'outbound-rtp' && s.kind === 'video') {
      layers[s.rid || '?'] = {width: s.frameWidth || 0, height: s.frameHeight || 0,
        frames: s.framesEncoded || 0, bytes: s.bytesSent || 0,
        limit: s.qualityLimitationReason || '', active: s.active};
    }
  });
  return JSON.stringify({state: pc.connectionState, layers});
}
</script></body></html>
"""


def out(msg):
    sys.stdout.write(json.dumps(msg) + "\n")
    sys.stdout.flush()


def find_chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Chrome:
    """A headless chromium with one page, driven over a DevTools pipe."""

    def __init__(self, page_url, profile):
        # fd 3: commands to chromium, fd 4: its replies and events.
        to_chrome_r, self.to_chrome = os.pipe()
        self.from_chrome, from_chrome_w = os.pipe()

        def fds():
            # (via high numbers: the pipes may themselves be 3 or 4)
            os.dup2(to_chrome_r, 100)
            os.dup2(from_chrome_w, 101)
            os.dup2(100, 3)
            os.dup2(101, 4)
            os.close(100)
            os.close(101)
            # Chromium dies with this helper (the test kills the helper).
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG

        args = [
            find_chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--mute-audio",
            "--user-data-dir=" + profile,
            "--remote-debugging-pipe",
            "--use-fake-device-for-media-stream",
            "--use-fake-ui-for-media-stream",
            "--allow-file-access-from-files",
            # Real host candidates, not mDNS names (the server drops those).
            "--disable-features=WebRtcHideLocalIpsWithMdns",
            # Timers and rendering of a hidden page are not throttled.
            "--disable-background-timer-throttling",
            "--disable-renderer-backgrounding",
            "--disable-backgrounding-occluded-windows",
            page_url,
        ]
        self.proc = subprocess.Popen(
            args, preexec_fn=fds, close_fds=False, start_new_session=True,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(profile, "chromium.log"), "wb"))
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self.buf = b""
        self.next_id = 0
        self.session = None

    def _read_message(self):
        while b"\0" not in self.buf:
            chunk = os.read(self.from_chrome, 65536)
            if not chunk:
                raise RuntimeError("chromium closed its DevTools pipe")
            self.buf += chunk
        msg, self.buf = self.buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method, params=None, session=True):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        data = json.dumps(msg).encode() + b"\0"
        while data:
            n = os.write(self.to_chrome, data)
            data = data[n:]
        while True:
            reply = self._read_message()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def attach(self, url):
        for _ in range(200):
            targets = self.call("Target.getTargets", session=False)["targetInfos"]
            pages = [t for t in targets if t["type"] == "page" and t["url"] == url]
            if pages:
                r = self.call("Target.attachToTarget",
                              {"targetId": pages[0]["targetId"], "flatten": True},
                              session=False)
                self.session = r["sessionId"]
                break
            time.sleep(0.05)
        else:
            raise RuntimeError("chromium opened no page for " + url)
        # The page script is there once the document loaded.
        for _ in range(200):
            r = self.eval("typeof start")
            if r == "function":
                return
            time.sleep(0.05)
        raise RuntimeError("the page did not load")

    def eval(self, expr):
        r = self.call("Runtime.evaluate",
                      {"expression": expr, "awaitPromise": True, "returnByValue": True})
        if "exceptionDetails" in r:
            d = r["exceptionDetails"]
            raise RuntimeError(d.get("exception", {}).get("description") or d.get("text"))
        return r["result"].get("value")

    def close(self):
        try:
            # Its own process group: the browser and its helpers.
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        except Exception:
            pass


def main():
    role = sys.argv[1]
    if role != "publish":
        raise SystemExit("only publish is supported")
    width, height = (int(x) for x in sys.argv[2].split("x"))
    if not find_chromium():
        out({"type": "error", "error": "chromium is not installed"})
        return
    own_profile = len(sys.argv) <= 3
    profile = tempfile.mkdtemp(prefix="mcu-chrome-") if own_profile else sys.argv[3]
    page = os.path.join(profile, "publisher.html")
    with open(page, "w") as f:
        f.write(PAGE)
    url = "file://" + page
    chrome = Chrome(url, profile)
    try:
        chrome.attach(url)
        sdp = chrome.eval(f"start({width}, {height})")
        out({"type": "offer", "sdp": sdp})
        for line in sys.stdin:
            msg = json.loads(line)
            kind = msg.get("type")
            try:
                if kind == "answer":
                    chrome.eval(f"answer({json.dumps(msg['sdp'])})")
                    out({"type": "ok"})
                elif kind == "candidate":
                    chrome.eval(f"candidate({json.dumps(msg['candidate'])})")
                    out({"type": "ok"})
                elif kind == "stats":
                    s = json.loads(chrome.eval("stats()"))
                    out({"type": "stats", "state": s["state"], "layers": s["layers"]})
                elif kind == "quit":
                    break
            except Exception as e:  # report, do not die: the test reads the error
                out({"type": "error", "error": repr(e)})
    except Exception as e:
        log = ""
        try:
            with open(os.path.join(profile, "chromium.log"), errors="replace") as f:
                log = f.read()[-2000:]
        except OSError:
            pass
        out({"type": "error", "error": repr(e), "chromium_log": log})
    finally:
        chrome.close()
        if own_profile:
            shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    main()
