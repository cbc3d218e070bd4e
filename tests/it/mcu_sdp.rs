//! Offers are read as Janus reads them (any whitespace, names in any case),
//! unknown media types are refused, and a publisher whose media lost its
//! permission is closed at Janus. Against a real Janus, as `mcu.rs`.

use crate::mcu::publish;
use crate::support::janus::{audio_offer, audio_video_offer, wait_janus, Janus, Observer};
use crate::support::{FakeNextcloud, TestServer};
use serde_json::json;

#[tokio::test]
async fn offers_are_checked_as_janus_reads_them() {
    let j = Janus::start().await;
    let nc = FakeNextcloud::start().await;
    {
        let mut st = nc.state.lock().unwrap();
        st.permissions
            .insert("nc-audio".into(), vec!["publish-audio".into()]);
        st.permissions.insert(
            "nc-av".into(),
            vec!["publish-audio".into(), "publish-video".into()],
        );
    }
    let ts = TestServer::start_on(nc, &j.mcu_section("")).await;
    wait_janus(&ts, true).await;
    let mut obs = Observer::connect(&j.url()).await;

    let mut audio = ts.client(Some("audio")).await;
    audio.join("room1", "nc-audio").await;
    // Video in other spellings still needs publish-video.
    for m in ["m=VIDEO ", "m=video\t", "m=Video  "] {
        let sdp = audio_video_offer().replace("m=video ", m);
        let r = publish(&mut audio, "video", &sdp, "1").await;
        assert_eq!(r["error"]["code"], "not_allowed", "{m:?}: {r}");
    }
    // A media type that is not registered is refused (as the Go server).
    let sdp = audio_video_offer().replace("m=video ", "m=videox ");
    let r = publish(&mut audio, "video", &sdp, "1").await;
    assert_eq!(r["error"]["code"], "invalid_sdp", "{r}");
    assert_eq!(
        r["error"]["details"]["error"],
        "sdp: invalid value `videox`"
    );
    // An upper-case candidate attribute is a candidate: checked.
    let sdp = format!("{}a=CANDIDATE:1 1 udp nonsense\r\n", audio_offer());
    let r = publish(&mut audio, "video", &sdp, "1").await;
    assert_eq!(r["error"]["code"], "invalid_sdp", "{r}");
    // Audio alone is allowed.
    let r = publish(&mut audio, "video", &audio_offer(), "1").await;
    assert_eq!(r["message"]["data"]["type"], "answer", "{r}");

    // Video published as `m=VIDEO` is video when publish-video goes.
    let mut av = ts.client(Some("av")).await;
    av.join("room1", "nc-av").await;
    let sid = av.session_id.clone();
    let sdp = audio_video_offer().replace("m=video ", "m=VIDEO ");
    let r = publish(&mut av, "video", &sdp, "1").await;
    assert_eq!(r["message"]["data"]["type"], "answer", "{r}");
    obs.wait_room(&sid, "video", true).await;
    let perms = json!(["publish-audio"]);
    ts.backend_request(
        "room1",
        &json!({"type": "participants", "participants": {
        "changed": [{"sessionId": "nc-av", "inCall": 7, "permissions": perms}],
        "users": [{"sessionId": "nc-av", "inCall": 7, "permissions": perms}]}}),
    )
    .await;
    obs.wait_room(&sid, "video", false).await;
    ts.stop().await;
}
