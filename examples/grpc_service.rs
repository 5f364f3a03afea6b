//! A gRPC service built with tonic whose calls each get a key from a tower layer, revoked at the
//! end of the call.
//!
//! ```sh
//! cargo run --example grpc_service
//! ```

use vault_key_examples::{grpc, start_sandbox_server};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let local = start_sandbox_server().await?;
    let addr = grpc::serve(local.client.clone(), 500).await?;
    let reply = grpc::call_charge(addr, "run-7", 2_000).await?;
    println!(
        "agent.Tools/Charge: {} with key {}",
        reply.intent_id, reply.key_id
    );
    match grpc::call_charge(addr, "run-7", 60_000).await {
        Err(status) => println!(
            "over the $500 cap: {:?}: {}",
            status.code(),
            status.message()
        ),
        Ok(reply) => println!("unexpectedly charged {}", reply.intent_id),
    }
    local.client.flush().await;
    println!("both calls' keys are revoked");
    local.server.shutdown().await;
    Ok(())
}
