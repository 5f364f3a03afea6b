use vault_key::vault_key;

#[vault_key(vendor = "stripe", cap = 5, endpoints = ["/v1/customers"])]
struct Charge {
    amount: u64,
}

fn main() {
    let _ = Charge { amount: 1 }.amount;
}
