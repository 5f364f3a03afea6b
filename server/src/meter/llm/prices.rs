//! What model tokens cost: built-in defaults per vendor, overridable and extendable from the
//! server's config file (`[vendors.openai.prices."gpt-4o"]`).

use std::collections::HashMap;

use vault_key_wire::Usd;

/// When the built-in prices were taken from the vendors' published price lists. They change:
/// operators with money at stake set their own in the config file.
pub const PRICES_AS_OF: &str = "2025-08-01";

/// One model's price, in US dollars per million tokens, and its output ceiling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelPrice {
    /// Uncached input.
    pub input: Usd,
    /// Input read from the prompt cache.
    pub cached_input: Usd,
    /// Input written to the prompt cache (Anthropic bills writes above plain input).
    pub cache_write: Usd,
    /// Output (reasoning tokens included).
    pub output: Usd,
    /// The most output tokens one call can produce.
    pub max_output_tokens: u64,
}

/// Prices by model name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PriceTable {
    models: HashMap<String, ModelPrice>,
}

fn usd(text: &str) -> Usd {
    text.parse().expect("built-in prices are valid amounts")
}

fn price(
    input: &str,
    cached: &str,
    write: &str,
    output: &str,
    max_output_tokens: u64,
) -> ModelPrice {
    ModelPrice {
        input: usd(input),
        cached_input: usd(cached),
        cache_write: usd(write),
        output: usd(output),
        max_output_tokens,
    }
}

impl PriceTable {
    /// OpenAI's published prices (see [`PRICES_AS_OF`]).
    pub fn openai() -> PriceTable {
        PriceTable::from([
            ("gpt-4o", price("2.50", "1.25", "2.50", "10", 16_384)),
            (
                "gpt-4o-mini",
                price("0.15", "0.075", "0.15", "0.60", 16_384),
            ),
            ("gpt-4.1", price("2", "0.50", "2", "8", 32_768)),
            (
                "gpt-4.1-mini",
                price("0.40", "0.10", "0.40", "1.60", 32_768),
            ),
            (
                "gpt-4.1-nano",
                price("0.10", "0.025", "0.10", "0.40", 32_768),
            ),
            ("o4-mini", price("1.10", "0.275", "1.10", "4.40", 100_000)),
            (
                "text-embedding-3-small",
                price("0.02", "0.02", "0.02", "0", 0),
            ),
            (
                "text-embedding-3-large",
                price("0.13", "0.13", "0.13", "0", 0),
            ),
        ])
    }

    /// Anthropic's published prices (see [`PRICES_AS_OF`]); cache writes at 1.25× input.
    pub fn anthropic() -> PriceTable {
        PriceTable::from([
            (
                "claude-opus-4-1",
                price("15", "1.50", "18.75", "75", 32_000),
            ),
            ("claude-sonnet-4", price("3", "0.30", "3.75", "15", 64_000)),
            (
                "claude-3-7-sonnet",
                price("3", "0.30", "3.75", "15", 64_000),
            ),
            ("claude-3-5-haiku", price("0.80", "0.08", "1", "4", 8_192)),
        ])
    }

    /// Adds or replaces a model's price.
    pub fn insert(&mut self, model: impl Into<String>, price: ModelPrice) {
        self.models.insert(model.into(), price);
    }

    /// The price of `model`: by its exact name, or by its name without a date suffix
    /// (`gpt-4o-2024-08-06`, `claude-sonnet-4-20250514`). Never by any other prefix, so that
    /// `gpt-4o-mini` is never priced as `gpt-4o`.
    pub fn get(&self, model: &str) -> Option<&ModelPrice> {
        self.models
            .get(model)
            .or_else(|| self.models.get(without_date_suffix(model)?))
    }
}

impl<const N: usize> From<[(&str, ModelPrice); N]> for PriceTable {
    fn from(entries: [(&str, ModelPrice); N]) -> PriceTable {
        PriceTable {
            models: entries
                .into_iter()
                .map(|(model, price)| (model.to_owned(), price))
                .collect(),
        }
    }
}

/// `name` without a trailing `-YYYY-MM-DD` or `-YYYYMMDD`.
fn without_date_suffix(model: &str) -> Option<&str> {
    let (base, last) = model.rsplit_once('-')?;
    if last.len() == 8 && last.bytes().all(|b| b.is_ascii_digit()) {
        return Some(base);
    }
    let (base, day) = (base, last);
    let (base, month) = base.rsplit_once('-')?;
    let (base, year) = base.rsplit_once('-')?;
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    (digits(year, 4) && digits(month, 2) && digits(day, 2)).then_some(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dated_snapshots_are_priced_as_their_model_and_nothing_else_is() {
        let openai = PriceTable::openai();
        assert_eq!(openai.get("gpt-4o-2024-08-06"), openai.get("gpt-4o"));
        assert_eq!(
            openai.get("gpt-4o-mini-2024-07-18"),
            openai.get("gpt-4o-mini")
        );
        assert_ne!(openai.get("gpt-4o-mini"), openai.get("gpt-4o"));
        assert_eq!(openai.get("gpt-4o-large"), None);
        assert_eq!(openai.get("gpt-4o-2024"), None);
        let anthropic = PriceTable::anthropic();
        assert_eq!(
            anthropic.get("claude-sonnet-4-20250514"),
            anthropic.get("claude-sonnet-4")
        );
    }
}
