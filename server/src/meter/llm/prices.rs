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
    /// OpenAI's published prices (see [`PRICES_AS_OF`]), for each model's alias and its dated
    /// snapshots (a snapshot may be priced apart: `gpt-4o-2024-05-13` costs twice `gpt-4o`).
    pub fn openai() -> PriceTable {
        let gpt_4o = price("2.50", "1.25", "2.50", "10", 16_384);
        let gpt_4o_mini = price("0.15", "0.075", "0.15", "0.60", 16_384);
        let gpt_41 = price("2", "0.50", "2", "8", 32_768);
        let gpt_41_mini = price("0.40", "0.10", "0.40", "1.60", 32_768);
        let gpt_41_nano = price("0.10", "0.025", "0.10", "0.40", 32_768);
        let o4_mini = price("1.10", "0.275", "1.10", "4.40", 100_000);
        PriceTable::from([
            ("gpt-4o", gpt_4o.clone()),
            ("gpt-4o-2024-08-06", gpt_4o.clone()),
            ("gpt-4o-2024-11-20", gpt_4o),
            // The first snapshot: no cached-input discount, a 4,096-token output ceiling.
            ("gpt-4o-2024-05-13", price("5", "5", "5", "15", 4_096)),
            ("gpt-4o-mini", gpt_4o_mini.clone()),
            ("gpt-4o-mini-2024-07-18", gpt_4o_mini),
            ("gpt-4.1", gpt_41.clone()),
            ("gpt-4.1-2025-04-14", gpt_41),
            ("gpt-4.1-mini", gpt_41_mini.clone()),
            ("gpt-4.1-mini-2025-04-14", gpt_41_mini),
            ("gpt-4.1-nano", gpt_41_nano.clone()),
            ("gpt-4.1-nano-2025-04-14", gpt_41_nano),
            ("o4-mini", o4_mini.clone()),
            ("o4-mini-2025-04-16", o4_mini),
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

    /// Anthropic's published prices (see [`PRICES_AS_OF`]), for each model's aliases and dated
    /// snapshot; cache writes (five-minute) at 1.25× input.
    pub fn anthropic() -> PriceTable {
        let opus = price("15", "1.50", "18.75", "75", 32_000);
        let sonnet = price("3", "0.30", "3.75", "15", 64_000);
        let haiku = price("0.80", "0.08", "1", "4", 8_192);
        PriceTable::from([
            ("claude-opus-4-1", opus.clone()),
            ("claude-opus-4-1-20250805", opus.clone()),
            ("claude-opus-4-0", opus.clone()),
            ("claude-opus-4-20250514", opus),
            ("claude-sonnet-4", sonnet.clone()),
            ("claude-sonnet-4-0", sonnet.clone()),
            ("claude-sonnet-4-20250514", sonnet.clone()),
            ("claude-3-7-sonnet", sonnet.clone()),
            ("claude-3-7-sonnet-latest", sonnet.clone()),
            ("claude-3-7-sonnet-20250219", sonnet),
            ("claude-3-5-haiku", haiku.clone()),
            ("claude-3-5-haiku-latest", haiku.clone()),
            ("claude-3-5-haiku-20241022", haiku),
        ])
    }

    /// Adds or replaces a model's price.
    pub fn insert(&mut self, model: impl Into<String>, price: ModelPrice) {
        self.models.insert(model.into(), price);
    }

    /// The price of `model`, by its exact name only: a dated snapshot may be priced apart from
    /// its alias, and `gpt-4o-mini` must never be priced as `gpt-4o`.
    pub fn get(&self, model: &str) -> Option<&ModelPrice> {
        self.models.get(model)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_are_priced_by_their_exact_name() {
        let openai = PriceTable::openai();
        assert_eq!(openai.get("gpt-4o-2024-08-06"), openai.get("gpt-4o"));
        let first = openai.get("gpt-4o-2024-05-13").unwrap();
        assert_eq!(first.output, usd("15"), "the first snapshot costs more");
        assert_ne!(openai.get("gpt-4o-mini"), openai.get("gpt-4o"));
        assert_eq!(openai.get("gpt-4o-large"), None);
        assert_eq!(openai.get("gpt-4o-2099-01-01"), None, "an unknown snapshot");
        let anthropic = PriceTable::anthropic();
        assert_eq!(
            anthropic.get("claude-sonnet-4-20250514"),
            anthropic.get("claude-sonnet-4-0")
        );
        assert_eq!(anthropic.get("claude-sonnet-4-20990101"), None);
    }
}
