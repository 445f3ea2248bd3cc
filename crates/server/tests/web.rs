//! The web client's files and invitation links, over real HTTP on loopback.

mod support;

use conclave_server::web::{WebAsset, INVITE_SUBJECT};
use conclave_server::{Claims, ServerKeys};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

static ASSETS: &[WebAsset] = &[
    WebAsset {
        path: "index.html",
        mime: "text/html; charset=utf-8",
        body: b"<!doctype html><title>test page</title>",
    },
    WebAsset {
        path: "snippets/x/inline0.js",
        mime: "text/javascript; charset=utf-8",
        body: b"export const x = 1;",
    },
];

struct Server {
    running: conclave_server::RunningServer,
    keys: ServerKeys,
}

async fn server(web: &'static [WebAsset]) -> Server {
    let (args, dir) = support::loopback_args("conclave-web");
    let mut config = args.resolve().unwrap();
    config.web = web;
    let keys = ServerKeys::load_or_create(&dir).unwrap();
    Server {
        running: conclave_server::start(config, keys).await.unwrap(),
        keys: ServerKeys::load_or_create(&dir).unwrap(),
    }
}

fn now() -> u64 {
    support::unix_now()
}

impl Server {
    fn token(&self, room: &str, sub: &str) -> String {
        self.keys.token.issue(&Claims {
            room: room.into(),
            sub: sub.into(),
            name: String::new(),
            exp: now() + 3600,
        })
    }

    /// One HTTP/1.1 request; (status, lower-cased head, body).
    async fn http(&self, method: &str, path: &str, body: &str) -> (u16, String, String) {
        let mut s = tokio::net::TcpStream::connect(self.running.addr)
            .await
            .unwrap();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        let text = String::from_utf8_lossy(&out).to_string();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, head.to_lowercase(), body.to_string())
    }
}

#[tokio::test]
async fn the_web_client_is_served_with_a_strict_content_security_policy() {
    let s = server(ASSETS).await;
    let (status, head, body) = s.http("GET", "/", "").await;
    assert_eq!(status, 200);
    assert!(body.contains("test page"));
    assert!(
        head.contains(
            "content-security-policy: default-src 'none'; script-src 'self' 'wasm-unsafe-eval'"
        ),
        "{head}"
    );
    assert!(head.contains("frame-ancestors 'none'"));
    assert!(head.contains("x-content-type-options: nosniff"));
    assert!(head.contains("referrer-policy: no-referrer"));
    // Nested files (wasm-bindgen's snippets) are served too, with their type.
    let (status, head, body) = s.http("GET", "/app/snippets/x/inline0.js", "").await;
    assert_eq!(status, 200);
    assert!(head.contains("content-type: text/javascript"));
    assert_eq!(body, "export const x = 1;");
    let (status, _, _) = s.http("GET", "/app/../Cargo.toml", "").await;
    assert_eq!(status, 404);
    let (status, _, _) = s.http("GET", "/app/nope.js", "").await;
    assert_eq!(status, 404);
    s.running.stop().await;
}

#[tokio::test]
async fn a_build_without_the_web_client_says_how_to_join() {
    let s = server(&[]).await;
    let (status, _, body) = s.http("GET", "/", "").await;
    assert_eq!(status, 200);
    assert!(body.contains("no web client"), "{body}");
    assert!(body.contains("conclave join"));
    s.running.stop().await;
}

#[tokio::test]
async fn an_invitation_gives_each_guest_an_identity_of_its_own() {
    let s = server(ASSETS).await;
    let invite = s.token("r1", INVITE_SUBJECT);
    let body = format!(r#"{{"room":"r1","invite":"{invite}","name":"Guest One"}}"#);
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (status, _, out) = s.http("POST", "/guest", &body).await;
        assert_eq!(status, 200, "{out}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let token = v["token"].as_str().unwrap();
        let claims = s.keys.token.verify(token, "r1", now()).unwrap();
        assert_eq!(claims.name, "Guest One");
        assert!(claims.sub.starts_with("guest-"));
        assert_eq!(claims.sub, v["user_id"].as_str().unwrap());
        // A guest token opens only its room.
        assert!(s.keys.token.verify(token, "r2", now()).is_err());
        ids.push(claims.sub);
    }
    assert_ne!(ids[0], ids[1], "every guest gets a fresh identity");

    // What is refused, with a reason.
    let join_token = s.token("r1", "mallory");
    let cases = [
        (
            "an invitation for another room",
            format!(r#"{{"room":"r2","invite":"{invite}","name":"x"}}"#),
            401,
        ),
        (
            "a join token is no invitation",
            format!(r#"{{"room":"r1","invite":"{join_token}","name":"x"}}"#),
            400,
        ),
        (
            "garbage",
            r#"{"room":"r1","invite":"ct1.x.y","name":"x"}"#.to_string(),
            401,
        ),
        (
            "no name",
            format!(r#"{{"room":"r1","invite":"{invite}","name":"  "}}"#),
            400,
        ),
        (
            "a control character",
            format!(r#"{{"room":"r1","invite":"{invite}","name":"a\u0007"}}"#),
            400,
        ),
        (
            "a long name",
            format!(
                r#"{{"room":"r1","invite":"{invite}","name":"{}"}}"#,
                "n".repeat(65)
            ),
            400,
        ),
        ("not JSON", "{".to_string(), 400),
        (
            "unknown fields",
            format!(r#"{{"room":"r1","invite":"{invite}","name":"x","sub":"admin"}}"#),
            400,
        ),
    ];
    for (what, body, want) in cases {
        let (status, _, out) = s.http("POST", "/guest", &body).await;
        assert_eq!(status, want, "{what}: {out}");
        assert!(!out.is_empty(), "{what}: a reason");
    }
    s.running.stop().await;
}
