//! One conversation with the CA, through instant-acme: load or create the account, place an
//! order for a set of names, answer its challenges, send a CSR and download the chain.

use super::challenge::Published;
use super::store;
use crate::config::acme::{AcmeSettings, Challenge};
use bytes::Bytes;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, ChallengeType, HttpClient,
    Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use std::sync::Arc;
use std::time::Duration;

/// How long the CA may take to validate and to sign before the attempt counts as failed.
const POLL: RetryPolicy = RetryPolicy::new()
    .initial_delay(Duration::from_millis(250))
    .backoff(1.5)
    .timeout(Duration::from_secs(120));

pub(crate) struct Issued {
    pub(crate) chain_pem: String,
    pub(crate) key_pem: String,
}

/// HTTPS to the CA: the system's trust store, or only `ca_roots` for a private CA.
fn http_client(settings: &AcmeSettings) -> Result<Box<dyn HttpClient>, String> {
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let builder = match &settings.ca_roots {
        Some(roots) => {
            let mut store = rustls::RootCertStore::empty();
            for root in roots {
                store
                    .add(root.clone())
                    .map_err(|e| format!("ca_roots: unusable root certificate: {}", chain(&e)))?;
            }
            let config =
                rustls::ClientConfig::builder_with_provider(Arc::new(crate::certs::provider()))
                    .with_safe_default_protocol_versions()
                    .map_err(|e| format!("TLS client setup: {}", chain(&e)))?
                    .with_root_certificates(store)
                    .with_no_client_auth();
            builder.with_tls_config(config)
        }
        None => builder
            .try_with_platform_verifier()
            .map_err(|e| format!("cannot load the system's trusted roots: {}", chain(&e)))?,
    };
    let connector = builder.https_only().enable_http1().build();
    let client: HyperClient<_, BodyWrapper<Bytes>> =
        HyperClient::builder(TokioExecutor::new()).build(connector);
    Ok(Box::new(client))
}

/// The stored account for this CA, if there is one (loading it fetches the CA's directory).
pub(crate) async fn stored_account(settings: &AcmeSettings) -> Result<Option<Account>, String> {
    let path = settings.ca_dir.join(store::ACCOUNT_FILE);
    let stored = store::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let Some(bytes) = stored else {
        return Ok(None);
    };
    let creds: AccountCredentials = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{}: not an account file: {e}", path.display()))?;
    Account::builder_with_http(http_client(settings)?)
        .from_credentials(creds)
        .await
        .map(Some)
        .map_err(|e| format!("ACME directory {}: {}", settings.directory, chain(&e)))
}

/// The account for this CA: the stored one, or a new one (stored before it is used, so a
/// crash right after registering does not register again on the next start).
pub(crate) async fn account(settings: &AcmeSettings) -> Result<Account, String> {
    if let Some(account) = stored_account(settings).await? {
        return Ok(account);
    }
    let path = settings.ca_dir.join(store::ACCOUNT_FILE);
    let contact = settings.email.as_ref().map(|e| format!("mailto:{e}"));
    let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
    let (account, creds) = Account::builder_with_http(http_client(settings)?)
        .create(
            &NewAccount {
                contact: &contact,
                // tls = "acme" is the operator's agreement to the CA's terms (README).
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            settings.directory.clone(),
            None,
        )
        .await
        .map_err(|e| {
            format!(
                "ACME account registration at {}: {}",
                settings.directory,
                chain(&e)
            )
        })?;
    let json = serde_json::to_vec_pretty(&creds).map_err(|e| format!("account: {}", chain(&e)))?;
    store::write_atomic(&path, &json)
        .map_err(|e| format!("cannot save the ACME account to {}: {e}", path.display()))?;
    tracing::info!(directory = %settings.directory, "ACME account registered");
    Ok(account)
}

/// Orders a certificate for `names` and waits for it.
pub(crate) async fn order(
    account: &Account,
    names: &[String],
    challenge: Challenge,
) -> Result<Issued, String> {
    let identifiers: Vec<Identifier> = names.iter().cloned().map(Identifier::Dns).collect();
    let mut order = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .map_err(|e| format!("new order: {}", chain(&e)))?;
    // Answers stay published until this function returns, whatever the outcome.
    let mut published = Published::default();
    let kind = match challenge {
        Challenge::Http01 => ChallengeType::Http01,
        Challenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
    };
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz.map_err(|e| format!("authorization: {}", chain(&e)))?;
        let name = authz.identifier().to_string();
        match authz.status {
            AuthorizationStatus::Pending => {}
            // The account proved this name recently; the CA reuses that.
            AuthorizationStatus::Valid => continue,
            other => return Err(format!("authorization for {name} is {other:?}")),
        }
        let mut ch = authz.challenge(kind.clone()).ok_or_else(|| {
            format!(
                "the CA offers no {} challenge for {name}",
                challenge.as_str()
            )
        })?;
        let key_authorization = ch.key_authorization();
        match challenge {
            Challenge::Http01 => published.http01(&ch.token, key_authorization.as_str()),
            Challenge::TlsAlpn01 => {
                published.tls_alpn01(&name, key_authorization.digest().as_ref())?
            }
        }
        ch.set_ready()
            .await
            .map_err(|e| format!("challenge for {name}: {}", chain(&e)))?;
    }

    let status = order
        .poll_ready(&POLL)
        .await
        .map_err(|e| format!("waiting for validation: {}", chain(&e)))?;
    if status != OrderStatus::Ready {
        return Err(format!(
            "validation failed: {}",
            why_invalid(&mut order).await
        ));
    }
    let key_pem = order
        .finalize()
        .await
        .map_err(|e| format!("finalize: {}", chain(&e)))?;
    let chain_pem = order
        .poll_certificate(&POLL)
        .await
        .map_err(|e| format!("certificate download: {}", chain(&e)))?;
    drop(published);
    Ok(Issued { chain_pem, key_pem })
}

/// The CA's reasons, from the challenges that failed.
async fn why_invalid(order: &mut instant_acme::Order) -> String {
    let mut reasons = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authz)) = authorizations.next().await {
        if authz.refresh().await.is_err() {
            continue;
        }
        let name = authz.identifier().to_string();
        for ch in &authz.challenges {
            if let Some(problem) = &ch.error {
                reasons.push(format!("{name}: {problem}"));
            }
        }
    }
    if reasons.is_empty() {
        "the CA declared the order invalid".to_owned()
    } else {
        reasons.join("; ")
    }
}

/// An error with its causes: hyper's "client error (Connect)" alone does not say that the
/// CA's certificate was not trusted or that nothing listens.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}
