//! Methods (`&self`, `&mut self`), generic functions with bounds and `where` clauses, and an error
//! type of the user's own behind a `Result` alias.
use vault_key::{vault_key, VaultKey};

#[derive(Debug)]
enum AppError {
    Vault(vault_key::Error),
}

impl From<vault_key::Error> for AppError {
    fn from(error: vault_key::Error) -> Self {
        AppError::Vault(error)
    }
}

type AppResult<T> = Result<T, AppError>;

struct Agent {
    runs: u32,
}

impl Agent {
    #[vault_key(vendor = "stripe", cap = 5, endpoints = ["/v1/customers"], label = "agent-{self}")]
    async fn look(&self, key: &VaultKey) -> AppResult<u32> {
        let _ = key.id();
        Ok(self.runs)
    }

    #[vault_key(vendor = "stripe", cap = 5, endpoints = ["/v1/customers"])]
    async fn count(&mut self) -> AppResult<u32> {
        self.runs += 1;
        Ok(self.runs)
    }
}

impl std::fmt::Display for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "agent{}", self.runs)
    }
}

#[vault_key(vendor = "stripe", cap = 5, endpoints = ["/v1/customers"], label = "{tag}")]
async fn generic<T>(tag: T, key: &VaultKey) -> Result<String, AppError>
where
    T: std::fmt::Display + Send,
{
    Ok(format!("{tag}{}", key.id()))
}

#[vault_key(vendor = "stripe", cap = 5, endpoints = ["/v1/customers"])]
async fn impl_argument(items: impl IntoIterator<Item = u8> + Send) -> Result<u32, vault_key::Error> {
    Ok(items.into_iter().map(u32::from).sum())
}

fn main() {
    let mut agent = Agent { runs: 0 };
    drop(agent.look());
    drop(agent.count());
    drop(generic("tag"));
    drop(impl_argument(vec![1, 2]));
    if let Err(AppError::Vault(_)) = Err::<(), _>(AppError::from(vault_key::Error::KeyRevoked)) {}
}
