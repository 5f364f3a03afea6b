//! Run budgets: one agent run's cap across all of its tool calls' keys.
//!
//! A client configured with a grant opens a run with no server contact ([`Client::open_run`]);
//! inside [`RunBudget::scope`] (or under a [`crate::axum::VaultKeyLayer`] with
//! [`run_budget`](crate::axum::VaultKeyLayer::run_budget), one run per `x-agent-run-id`) every
//! key the client mints is minted under the run, and the proxy holds the run's cap across all of
//! them, as well as each key's own and the grant's.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rand::distr::{Alphanumeric, SampleString};
use time::OffsetDateTime;
use tokio::task::futures::TaskLocalFuture;
use vault_key_wire::{RunCaveats, RunCredential, Usd, GRANT_ID_PREFIX};

use crate::client::Credential;
use crate::{Client, Error};

tokio::task_local! {
    static CURRENT_RUN: RunBudget;
}

/// One agent run's budget under the client's grant. Cheap to clone; holds no connection.
#[derive(Clone, Debug)]
pub struct RunBudget {
    credential: Arc<RunCredential>,
}

impl RunBudget {
    /// The run's id (`grt_…`): `GET`/`DELETE /v1/grants/{id}` show and stop the run once the
    /// proxy has seen one of its keys.
    pub fn id(&self) -> &str {
        &self.credential.run().run_id
    }

    /// Every key of the run has a label starting with this.
    pub fn label_prefix(&self) -> &str {
        &self.credential.run().label_prefix
    }

    /// Runs `future` inside the run: every key the client mints meanwhile (the attribute's, the
    /// Layer's, [`Client::issue`]'s) is minted under it, and a client that cannot (another
    /// grant's, or the admin token's) refuses to make a key rather than escape the run. The run
    /// is a task-local: work handed to `tokio::spawn` takes it along only in a scope of its own
    /// (`run.clone().scope(…)` inside the spawned future).
    pub fn scope<F: Future>(&self, future: F) -> TaskLocalFuture<RunBudget, F> {
        CURRENT_RUN.scope(self.clone(), future)
    }

    pub(crate) fn credential(&self) -> &RunCredential {
        &self.credential
    }

    /// When the run ends: no key of it lives longer.
    pub fn ends_at(&self) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(self.credential.run().expires_at)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }

    /// A key's label inside the run: its own when already under the run's prefix, else under
    /// it at a segment boundary (`run-42/` + `charge`, `run-42` + `/charge`).
    pub(crate) fn label_for(&self, label: &str) -> String {
        let prefix = self.label_prefix();
        if vault_key_wire::label_is_under(label, prefix) {
            label.to_owned()
        } else if prefix.ends_with('/') {
            format!("{prefix}{label}")
        } else {
            format!("{prefix}/{label}")
        }
    }
}

/// The run of the enclosing [`RunBudget::scope`], if any.
pub fn current_run() -> Option<RunBudget> {
    CURRENT_RUN.try_with(Clone::clone).ok()
}

impl Client {
    /// Opens a run budget under the client's grant, with no server contact: `cap` for all the
    /// run's keys together each day, keys labelled under `label_prefix` (which must start with
    /// the grant's), for `lifetime` (which must end within the grant's own: a client that holds
    /// only the grant's credential cannot know its expiry, and the proxy refuses the run's keys
    /// if it does not). The proxy records the run at its first key's first use; `DELETE
    /// /v1/grants/{run id}` can stop it from then on.
    ///
    /// ```no_run
    /// # async fn run(client: vault_key::Client) -> Result<(), vault_key::Error> {
    /// use std::time::Duration;
    /// use vault_key::Usd;
    ///
    /// let run = client.open_run("run-42/", Usd::from_dollars(50).unwrap(), Duration::from_secs(3600))?;
    /// run.scope(async {
    ///     // every #[vault_key] call in here mints its key under run-42's $50
    /// })
    /// .await;
    /// # Ok(()) }
    /// ```
    pub fn open_run(
        &self,
        label_prefix: impl Into<String>,
        cap: Usd,
        lifetime: Duration,
    ) -> Result<RunBudget, Error> {
        let Credential::Grant(grant) = self.credential() else {
            return Err(Error::NotConfigured(
                "run budgets are minted from a grant: build the client with \
                 Client::grant_builder or VAULT_KEY_GRANT"
                    .to_owned(),
            ));
        };
        let label_prefix = label_prefix.into();
        if label_prefix.is_empty() || cap.is_zero() || lifetime.is_zero() {
            return Err(Error::InvalidSpec(
                "a run needs a label prefix, a cap above zero and a lifetime".to_owned(),
            ));
        }
        let ends = OffsetDateTime::now_utc() + lifetime;
        let run = RunCaveats {
            run_id: format!(
                "{GRANT_ID_PREFIX}{}",
                Alphanumeric.sample_string(&mut rand::rng(), 22)
            ),
            label_prefix,
            daily_cap_micros: cap.micros(),
            expires_at: ends.unix_timestamp(),
        };
        Ok(RunBudget {
            credential: Arc::new(grant.open_run(&run)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KeySpec;

    fn grant_client(id: &str) -> Client {
        let grant = vault_key_wire::GrantCredential::from_parts(id, &"s".repeat(43)).unwrap();
        Client::grant_builder("http://127.0.0.1:9", grant.token())
            .build()
            .unwrap()
    }

    fn spec() -> KeySpec {
        KeySpec::new("stripe")
            .cap_usd(5)
            .endpoints(["/v1/customers"])
            .label("charge")
    }

    #[test]
    fn a_keys_label_goes_under_its_run_at_a_segment_boundary() {
        let client = grant_client("grt_AAAAAAAAAAAAAAAAAAAAAA");
        let hour = Duration::from_secs(3600);
        let slash = client
            .open_run("run-42/", Usd::from_micros(1), hour)
            .unwrap();
        assert_eq!(slash.label_for("charge"), "run-42/charge");
        assert_eq!(slash.label_for("run-42/charge"), "run-42/charge");
        let bare = client.open_run("run-4", Usd::from_micros(1), hour).unwrap();
        assert_eq!(bare.label_for("charge"), "run-4/charge");
        assert_eq!(bare.label_for("run-4"), "run-4");
        assert_eq!(bare.label_for("run-42/charge"), "run-4/run-42/charge");
        assert!(client.open_run("", Usd::from_micros(1), hour).is_err());
        assert!(client.open_run("run-1/", Usd::ZERO, hour).is_err());
    }

    #[tokio::test]
    async fn inside_a_run_a_client_that_cannot_mint_under_it_makes_no_key() {
        let run = grant_client("grt_AAAAAAAAAAAAAAAAAAAAAA")
            .open_run(
                "run-1/",
                Usd::from_micros(1_000_000),
                Duration::from_secs(60),
            )
            .unwrap();
        // No request leaves: each refuses before any network.
        let admin = Client::new("http://127.0.0.1:9", "admin-token").unwrap();
        let refused = run.scope(admin.issue(&spec())).await.unwrap_err();
        assert!(matches!(refused, Error::NotConfigured(_)), "{refused:?}");
        let other = grant_client("grt_BBBBBBBBBBBBBBBBBBBBBB");
        let refused = run.scope(other.issue(&spec())).await.unwrap_err();
        assert!(matches!(refused, Error::NotConfigured(_)), "{refused:?}");
        assert!(admin
            .open_run("run-1/", Usd::from_micros(1), Duration::from_secs(60))
            .is_err());
    }
}
