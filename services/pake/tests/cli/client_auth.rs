//! `pake-client-auth` against a real gateway issuing real tokens with a two-second
//! lifetime: one token request for many concurrent calls, a new token before the old one
//! expires, and a call refused 401 with a truly expired token that succeeds once refreshed.

use crate::support::Pake;
use pake_client_auth::{Auth, Error};
use std::time::{Duration, Instant};

const SECRET: &str = "client-auth-test-secret-0123456789abcdef";
const CLIENT_ID: &str = "auth-helper-admin";
const CLIENT_SECRET: &str = "auth-helper-admin-secret-0123456789abcdef";
/// The gateway's token lifetime; the platform accepts a token for 5 s past its expiry.
const TTL: Duration = Duration::from_secs(2);
const LEEWAY: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_shared_refreshed_before_expiry_and_after_a_401() {
    let scratch = crate::Scratch::new("client-auth");
    let dir = scratch.0.clone();
    let pake = Pake::start(
        &["registry", "gateway"],
        &[
            ("PAKE_DATA_DIR", dir.display().to_string()),
            ("PAKE_TOKEN_SECRET", SECRET.to_string()),
            ("PAKE_TOKEN_TTL_SECONDS", TTL.as_secs().to_string()),
            ("PAKE_ADMIN_CLIENT_ID", CLIENT_ID.to_string()),
            ("PAKE_ADMIN_CLIENT_SECRET", CLIENT_SECRET.to_string()),
        ],
    )
    .await;
    let (gateway, registry) = (pake.url("gateway"), pake.url("registry"));
    let auth = Auth::client_credentials(&gateway, CLIENT_ID, CLIENT_SECRET);
    let services = auth.bind(&registry, pake_mesh_client::Client::new_with_client);

    // Twenty concurrent calls with no token yet: one token request serves them all.
    let started = Instant::now();
    for listed in concurrently(&services, 20).await {
        assert_eq!(listed, 0);
    }
    assert_eq!(auth.tokens_fetched(), 1);
    let (first, left) = auth.access_token().await.unwrap();
    let left = left.expect("a fetched token's lifetime is known");
    assert!(left <= TTL, "{left:?}");

    // Within its lifetime the token is reused; a tenth of it before expiry it is replaced.
    services.call(|c| async move { c.list_services().send().await }).await.expect("listed");
    assert_eq!(auth.tokens_fetched(), 1);
    tokio::time::sleep(left.saturating_sub(TTL / 10) + Duration::from_millis(50)).await;
    services.call(|c| async move { c.list_services().send().await }).await.expect("listed with a new token");
    assert_eq!(auth.tokens_fetched(), 2);
    let (second, _) = auth.access_token().await.unwrap();
    assert_ne!(first, second);

    // Once past its expiry and the platform's leeway (whole seconds on the server's clock),
    // the first token is refused: as a static token the call fails 401 and is not retried;
    // reused with client credentials, ten concurrent calls are refused, one new token is
    // fetched, and all succeed.
    tokio::time::sleep((TTL + LEEWAY).saturating_sub(started.elapsed())).await;
    let stale = Auth::token(first.clone()).bind(&registry, pake_mesh_client::Client::new_with_client);
    let deadline = started + TTL + LEEWAY + Duration::from_secs(5);
    loop {
        match stale.call(|c| async move { c.list_services().send().await }).await {
            Err(Error::Api(error)) if error.status().is_some_and(|s| s.as_u16() == 401) => break,
            Ok(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(200)).await,
            other => panic!("an expired static token was not refused: {other:?}"),
        }
    }
    let renewed = Auth::client_credentials(&gateway, CLIENT_ID, CLIENT_SECRET);
    renewed.reuse(first.clone(), Duration::from_secs(3600)).await.unwrap();
    let services = renewed.bind(&registry, pake_mesh_client::Client::new_with_client);
    assert_eq!(concurrently(&services, 10).await.len(), 10);
    assert_eq!(renewed.tokens_fetched(), 1);
    assert_ne!(renewed.access_token().await.unwrap().0, first);

    // Wrong credentials are the gateway's 401, as a token error.
    let wrong = Auth::client_credentials(&gateway, CLIENT_ID, "not-the-secret-0123456789abcdef-0123456789");
    let services = wrong.bind(&registry, pake_mesh_client::Client::new_with_client);
    match services.call(|c| async move { c.list_services().send().await }).await {
        Err(Error::Token(error)) => assert_eq!(error.status, Some(401), "{error}"),
        other => panic!("wrong credentials were not a token error: {other:?}"),
    }
}

/// Lists services `n` times at once; the number of services each call saw.
async fn concurrently(services: &pake_client_auth::Authed<pake_mesh_client::Client>, n: usize) -> Vec<usize> {
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..n {
        let services = services.clone();
        calls.spawn(async move {
            let listed = services.call(|c| async move { c.list_services().send().await }).await;
            listed.expect("listed").into_inner().items.len()
        });
    }
    calls.join_all().await
}
