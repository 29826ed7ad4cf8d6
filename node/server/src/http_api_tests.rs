use super::*;
use dynakv_core::{GetReply, PutReply};
use dynakv_proto::codec::token::context_to_token;
use dynakv_proto::dvv::Actor;
use dynakv_ring::NodeId;

fn req(method: Method, uri: &str) -> Result<ClientRequest, Refusal> {
    parse(
        &method,
        &uri.parse().expect("uri"),
        &hyper::HeaderMap::new(),
    )
}

fn body_json(resp: Response<Full<Bytes>>) -> (StatusCode, serde_json::Value) {
    let status = resp.status();
    let bytes = futures_body(resp);
    (status, serde_json::from_slice(&bytes).expect("json body"))
}

fn futures_body(resp: Response<Full<Bytes>>) -> Bytes {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(async { resp.into_body().collect().await.expect("body").to_bytes() })
}

#[test]
fn keys_are_percent_decoded_and_options_come_from_the_query() {
    let Ok(ClientRequest::Get { key, opts }) =
        req(Method::GET, "/v1/kv/a%2Fb%20c?r=3&pr=1&timeout=250")
    else {
        panic!("a get")
    };
    assert_eq!(key, Bytes::from_static(b"a/b c"));
    assert_eq!(
        (opts.r, opts.pr, opts.timeout_ms),
        (Some(3), Some(1), Some(250))
    );
    let Ok(ClientRequest::Put {
        key, opts, context, ..
    }) = req(Method::PUT, "/v1/kv/%FF?w=2&pw=1&n=3")
    else {
        panic!("a put")
    };
    assert_eq!(key, Bytes::from_static(b"\xff"), "non-UTF-8 keys work");
    assert_eq!((opts.w, opts.pw, opts.n), (Some(2), Some(1), Some(3)));
    assert_eq!(context, NodeClock::new());
    assert!(matches!(
        req(Method::DELETE, "/v1/kv/k"),
        Ok(ClientRequest::Delete { .. })
    ));
}

#[test]
fn bad_requests_are_refused_with_a_reason() {
    let refused = |m: Method, uri: &str| req(m, uri).expect_err(uri);
    let r = refused(Method::GET, "/v1/kv/");
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.message.contains("empty"), "{r:?}");
    assert_eq!(
        refused(Method::GET, "/v2/kv/k").status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(refused(Method::GET, "/").status, StatusCode::NOT_FOUND);
    let r = refused(Method::POST, "/v1/kv/k");
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        r.response().headers().get(ALLOW).map(|v| v.as_bytes()),
        Some(&b"GET, PUT, DELETE"[..])
    );
    for uri in [
        "/v1/kv/k?w=2",
        "/v1/kv/k?r=x",
        "/v1/kv/k?r=300",
        "/v1/kv/k?timeout=-1",
        "/v1/kv/k?consistency=all",
    ] {
        let r = refused(Method::GET, uri);
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{uri}");
    }
    assert!(refused(Method::PUT, "/v1/kv/k?r=2")
        .message
        .contains("reads"));
    let mut headers = hyper::HeaderMap::new();
    headers.insert(CONTEXT_HEADER, HeaderValue::from_static("not-a-token"));
    let r = parse(&Method::PUT, &"/v1/kv/k".parse().expect("uri"), &headers).expect_err("bad");
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.message.contains(CONTEXT_HEADER), "{r:?}");
}

#[test]
fn a_context_header_round_trips() {
    let mut vv = NodeClock::new();
    vv.add_range(Actor::new(NodeId(2), 7), 1, 3);
    let mut headers = hyper::HeaderMap::new();
    let token = context_to_token(&vv);
    headers.insert(
        CONTEXT_HEADER,
        HeaderValue::from_str(&token).expect("header"),
    );
    let parsed = parse(&Method::DELETE, &"/v1/kv/k".parse().expect("uri"), &headers);
    let Ok(ClientRequest::Delete { context, .. }) = parsed else {
        panic!("a delete")
    };
    assert_eq!(context, vv);
}

#[test]
fn a_context_bound_to_another_key_is_refused() {
    use dynakv_proto::codec::token::bound_context_to_token;
    let mut vv = NodeClock::new();
    vv.add_range(Actor::new(NodeId(2), 7), 1, 3);
    let mut headers = hyper::HeaderMap::new();
    let token = bound_context_to_token(b"other", &vv);
    headers.insert(
        CONTEXT_HEADER,
        HeaderValue::from_str(&token).expect("header"),
    );
    let r = parse(&Method::PUT, &"/v1/kv/k".parse().expect("uri"), &headers).expect_err("bad");
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.message.contains("another key"), "{r:?}");
    let ok = parse(
        &Method::PUT,
        &"/v1/kv/other".parse().expect("uri"),
        &headers,
    );
    assert!(matches!(ok, Ok(ClientRequest::Put { context, .. }) if context == vv));
    // A read takes no context, so it does not check one.
    let read = parse(&Method::GET, &"/v1/kv/k".parse().expect("uri"), &headers);
    assert!(matches!(read, Ok(ClientRequest::Get { .. })), "{read:?}");
}

fn got(values: &[&'static str]) -> ServerFrame {
    ServerFrame::Core(ClientReply::Got(GetReply {
        values: values
            .iter()
            .map(|v| Bytes::from_static(v.as_bytes()))
            .collect(),
        context: NodeClock::new(),
        replied: 2,
        primary_replies: 2,
    }))
}

#[test]
fn reads_answer_200_one_value_300_siblings_404_none() {
    for (values, status) in [
        (&["v1"][..], StatusCode::OK),
        (&["v1", "v2"][..], StatusCode::MULTIPLE_CHOICES),
        (&[][..], StatusCode::NOT_FOUND),
    ] {
        let resp = reply_response(b"k", got(values));
        assert!(resp.headers().contains_key(CONTEXT_HEADER));
        let (s, body) = body_json(resp);
        assert_eq!(s, status);
        assert_eq!(body["key"], "k");
        assert_eq!(
            body["siblings"].as_array().map(Vec::len),
            Some(values.len())
        );
        assert!(body["context"].is_string());
    }
    let written = ServerFrame::Core(ClientReply::Written(PutReply {
        context: NodeClock::new(),
        dot: None,
        acks: 2,
        primary_acks: 1,
        fallback_acks: 1,
    }));
    let (s, body) = body_json(reply_response(b"k", written));
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (body["acks"].as_u64(), body["fallback_acks"].as_u64()),
        (Some(2), Some(1))
    );
}

#[test]
fn quorum_failures_are_503_and_say_how_many_answered() {
    let e = RequestError::Timeout {
        op: "put".into(),
        timeout_ms: 1000,
        answered: 1,
        needed: 2,
        asked: 3,
    };
    let (s, body) = body_json(error_response(&e));
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["code"], "quorum_timeout");
    assert_eq!(
        (
            body["answered"].as_u64(),
            body["needed"].as_u64(),
            body["asked"].as_u64()
        ),
        (Some(1), Some(2), Some(3))
    );
    assert!(body["error"].as_str().is_some_and(|m| m.contains("1 of 3")));
    let (s, _) = body_json(error_response(&RequestError::BadKey("too long".into())));
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = body_json(error_response(&RequestError::ValueTooLarge {
        len: 9,
        max: 1,
    }));
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    let overloaded = error_response(&RequestError::Overloaded { pending: 9 });
    assert!(overloaded.headers().contains_key(RETRY_AFTER));
}
