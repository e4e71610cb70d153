//! HTTP plumbing shared by the REST source and the ClickHouse and
//! Elasticsearch sinks: a rustls client, which failures are worth retrying,
//! `Retry-After`, the backoff schedule between attempts, and one timed,
//! counted request-answer exchange.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use bytes::Bytes;
use reqwest::{
    RequestBuilder, StatusCode,
    header::{AUTHORIZATION, HeaderMap, HeaderValue, RETRY_AFTER},
};
use sluice_crds::CredentialsRef;

use crate::{
    secrets::{SecretError, Secrets},
    telemetry::RequestMeter,
};

/// Most characters of a server's error body quoted in an error message.
const BODY_EXCERPT_CHARS: usize = 1_000;

/// Sends a request and reads its answer, timing it in `meter`. A transport
/// error or a non-success status (judged by `classify`) is counted as a failed
/// request; success is left to the caller, who may still refuse the answer.
pub async fn exchange(
    meter: &RequestMeter,
    request: RequestBuilder,
    classify: impl FnOnce(StatusCode, &HeaderMap, &str) -> Failure,
) -> Result<Bytes, Failure> {
    let timer = meter.seconds.start_timer();
    let transport = |e: reqwest::Error| meter.failure(Failure::from_transport(&e));
    let response = request.send().await.map_err(transport)?;
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.bytes().await.map_err(transport)?;
    timer.observe_duration();
    if status.is_success() {
        Ok(body)
    } else {
        let text = String::from_utf8_lossy(&body);
        Err(meter.failure(classify(status, &headers, &text)))
    }
}

/// A client with one per-request timeout.
pub fn client(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .timeout(timeout)
        .user_agent(concat!("sluice-runner/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// How requests authenticate; values are marked sensitive so they stay out of logs.
#[derive(Clone)]
pub enum Auth {
    Basic { user: String, password: String },
    Header(HeaderValue),
}

impl Auth {
    /// HTTP basic authentication with a user name and password from a Secret.
    pub fn basic(secrets: &Secrets, credentials: &CredentialsRef) -> Result<Self, SecretError> {
        let (user, password) = secrets.credentials(credentials)?;
        Ok(Self::Basic { user, password })
    }

    /// A literal `Authorization` header value (`ApiKey …`, `Bearer …`).
    pub fn header(value: &str) -> Result<Self, String> {
        let mut value = HeaderValue::from_str(value)
            .map_err(|_| "the credentials are not a valid header value".to_owned())?;
        value.set_sensitive(true);
        Ok(Self::Header(value))
    }

    /// Adds the authentication, if any, to a request.
    pub fn apply(auth: Option<&Self>, builder: RequestBuilder) -> RequestBuilder {
        match auth {
            Some(Self::Basic { user, password }) => builder.basic_auth(user, Some(password)),
            Some(Self::Header(value)) => builder.header(AUTHORIZATION, value.clone()),
            None => builder,
        }
    }
}

/// Why a request did not succeed, and whether trying again may help.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Overload, a 5xx, a timeout or a lost connection: try again, after
    /// `after` when the server said so (`Retry-After`).
    Transient {
        message: String,
        after: Option<Duration>,
    },
    /// The server refused the request as it is (4xx): trying again cannot help.
    Permanent { message: String },
}

impl Failure {
    pub fn message(&self) -> &str {
        match self {
            Self::Transient { message, .. } | Self::Permanent { message } => message,
        }
    }

    /// A transport error (no HTTP answer, or a body that could not be read).
    pub fn from_transport(error: &reqwest::Error) -> Self {
        let message = if error.is_timeout() {
            format!("request timed out: {error}")
        } else {
            format!("request failed: {error}")
        };
        if error.is_builder() {
            Self::Permanent { message }
        } else {
            Self::Transient {
                message,
                after: None,
            }
        }
    }

    /// An unsuccessful answer, with the server's own message quoted.
    pub fn from_status(status: StatusCode, headers: &HeaderMap, body: &str) -> Self {
        let message = format!("HTTP {status}: {}", excerpt(body));
        if is_transient_status(status) {
            Self::Transient {
                message,
                after: retry_after(headers),
            }
        } else {
            Self::Permanent { message }
        }
    }
}

/// 408, 429 and every 5xx.
pub fn is_transient_status(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
        || status.is_server_error()
}

/// The `Retry-After` header: delay-seconds or an HTTP date.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = jiff::fmt::rfc2822::parse(value).ok()?.timestamp();
    let wait = date.duration_since(jiff::Timestamp::now());
    Some(Duration::try_from(wait).unwrap_or_default())
}

/// The start of a server's message, on one line.
pub fn excerpt(body: &str) -> String {
    let trimmed = body.trim();
    let mut text: String = trimmed
        .chars()
        .take(BODY_EXCERPT_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if trimmed.chars().count() > BODY_EXCERPT_CHARS {
        text.push('…');
    }
    text
}

/// Delays between attempts: exponential from `min` up to `max`, with jitter,
/// for at most `attempts` retries (`None`: without end).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    pub min: Duration,
    pub max: Duration,
    pub attempts: Option<usize>,
}

impl RetryPolicy {
    /// What the sinks use: about five minutes of retries before giving up,
    /// so a short outage is ridden out and a long one surfaces as an error.
    pub const SINK: Self = Self {
        min: Duration::from_millis(200),
        max: Duration::from_secs(30),
        attempts: Some(15),
    };

    /// A fresh schedule.
    pub fn schedule(&self) -> ExponentialBackoff {
        let builder = ExponentialBuilder::default()
            .with_min_delay(self.min)
            .with_max_delay(self.max)
            .with_jitter();
        match self.attempts {
            Some(n) => builder.with_max_times(n),
            None => builder.without_max_times(),
        }
        .build()
    }
}

/// Runs `attempt` until it succeeds, fails permanently, or the policy's
/// retries run out (then with a transient failure that counts them); waits
/// `Retry-After` when the server names one, else the next backoff delay.
/// `on_retry` sees each transient failure (for logs and metrics).
pub async fn retry<T, F, Fut>(
    policy: &RetryPolicy,
    mut attempt: F,
    mut on_retry: impl FnMut(&Failure, Duration),
) -> Result<T, Failure>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Failure>>,
{
    let mut delays = policy.schedule();
    loop {
        let failure = match attempt().await {
            Ok(value) => return Ok(value),
            Err(failure @ Failure::Permanent { .. }) => return Err(failure),
            Err(failure) => failure,
        };
        // Still transient: the caller may back off longer and try again.
        let Some(delay) = delays.next() else {
            return Err(Failure::Transient {
                message: format!(
                    "gave up after {} attempts; last failure: {}",
                    policy.attempts.unwrap_or_default() + 1,
                    failure.message()
                ),
                after: None,
            });
        };
        let delay = match &failure {
            Failure::Transient {
                after: Some(after), ..
            } => *after,
            _ => delay,
        };
        on_retry(&failure, delay);
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        let soon = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(120);
        let date = jiff::fmt::rfc2822::DateTimePrinter::new()
            .timestamp_to_rfc9110_string(&soon)
            .unwrap();
        headers.insert(RETRY_AFTER, HeaderValue::from_str(&date).unwrap());
        let wait = retry_after(&headers).unwrap();
        assert!(
            wait > Duration::from_secs(100) && wait <= Duration::from_secs(120),
            "{wait:?}"
        );
        headers.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn only_overload_and_server_errors_are_transient() {
        let headers = HeaderMap::new();
        for (status, transient) in [
            (429, true),
            (408, true),
            (500, true),
            (503, true),
            (400, false),
            (401, false),
            (404, false),
        ] {
            let failure =
                Failure::from_status(StatusCode::from_u16(status).unwrap(), &headers, "no");
            assert_eq!(
                matches!(failure, Failure::Transient { .. }),
                transient,
                "{status}"
            );
        }
    }

    #[tokio::test]
    async fn retry_stops_at_permanent_failures_and_after_its_attempts() {
        let policy = RetryPolicy {
            min: Duration::from_millis(1),
            max: Duration::from_millis(2),
            attempts: Some(3),
        };
        let mut calls = 0;
        let transient = || Failure::Transient {
            message: "busy".into(),
            after: None,
        };
        let result: Result<(), _> = retry(
            &policy,
            || {
                calls += 1;
                std::future::ready(Err(transient()))
            },
            |_, _| {},
        )
        .await;
        assert_eq!(calls, 4);
        assert!(
            result
                .unwrap_err()
                .message()
                .contains("gave up after 4 attempts")
        );

        let mut calls = 0;
        let result: Result<(), _> = retry(
            &policy,
            || {
                calls += 1;
                std::future::ready(Err(Failure::Permanent {
                    message: "bad".into(),
                }))
            },
            |_, _| {},
        )
        .await;
        assert_eq!(calls, 1);
        assert_eq!(result.unwrap_err().message(), "bad");
    }
}
