//! A gRPC service (tonic) whose calls each get their own key from a tower layer: the same
//! `VaultKeyLayer` as for Axum, on tonic's router, so the key is issued when the call arrives and
//! revoked when it ends. The service is written without code generation (no `protoc` needed): the
//! messages derive `prost::Message`, and the method is routed by its gRPC path.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::codegen::http;
use tonic::server::{NamedService, UnaryService};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;
use vault_key::axum::VaultKeyLayer;
use vault_key::{Client, Error, KeySpec, VaultKey};

/// `agent.Tools/Charge` request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ChargeRequest {
    /// US cents.
    #[prost(uint64, tag = "1")]
    pub amount_cents: u64,
}

/// `agent.Tools/Charge` reply.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ChargeReply {
    /// The key this call used.
    #[prost(string, tag = "1")]
    pub key_id: String,
    /// The payment intent created.
    #[prost(string, tag = "2")]
    pub intent_id: String,
}

const CHARGE_PATH: &str = "/agent.Tools/Charge";

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The `agent.Tools` service.
#[derive(Debug, Clone, Default)]
pub struct ToolsService;

impl NamedService for ToolsService {
    const NAME: &'static str = "agent.Tools";
}

impl tower::Service<http::Request<tonic::body::Body>> for ToolsService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(async move {
            if request.uri().path() == CHARGE_PATH {
                let mut grpc = tonic::server::Grpc::new(ProstCodec::default());
                Ok(grpc.unary(Charge, request).await)
            } else {
                Ok(
                    Status::unimplemented(format!("no method {}", request.uri().path()))
                        .into_http(),
                )
            }
        })
    }
}

struct Charge;

impl UnaryService<ChargeRequest> for Charge {
    type Response = ChargeReply;
    type Future = BoxFuture<Result<Response<ChargeReply>, Status>>;

    fn call(&mut self, request: Request<ChargeRequest>) -> Self::Future {
        Box::pin(charge(request))
    }
}

/// Charges with the key the layer issued for this call.
async fn charge(request: Request<ChargeRequest>) -> Result<Response<ChargeReply>, Status> {
    let key = request
        .extensions()
        .get::<Arc<VaultKey>>()
        .cloned()
        .ok_or_else(|| Status::unavailable("no vault key for this call"))?;
    let amount = request.into_inner().amount_cents;
    let intent_id = crate::create_payment_intent(&key, amount, |request| request)
        .await
        .map_err(status_of)?;
    Ok(Response::new(ChargeReply {
        key_id: key.id().to_owned(),
        intent_id,
    }))
}

/// The gRPC status for a vault-key error.
pub fn status_of(error: Error) -> Status {
    match error {
        Error::CapExhausted { .. } => Status::resource_exhausted(error.to_string()),
        Error::EndpointNotAllowed { .. }
        | Error::MethodNotAllowed { .. }
        | Error::KeyRevoked
        | Error::KeyExpired => Status::permission_denied(error.to_string()),
        other => Status::unavailable(other.to_string()),
    }
}

/// Serves `agent.Tools` on a free loopback port (HTTP/2), each call with a key of its own (capped
/// at `cap_usd`, payment intents only, labelled from the `x-agent-run-id` metadata).
///
/// The layer lets calls through without a key when issuance fails, so that the method itself
/// answers `UNAVAILABLE` in gRPC's own status format rather than the layer answering HTTP 503.
pub async fn serve(client: Client, cap_usd: u64) -> std::io::Result<SocketAddr> {
    let spec = KeySpec::new("stripe")
        .cap_usd(cap_usd)
        .endpoints(["/v1/payment_intents"])
        .methods(["POST"])
        .label("grpc");
    let router = tonic::service::Routes::new(ToolsService)
        .into_axum_router()
        .layer(VaultKeyLayer::new(spec).client(client).fail_open());
    crate::serve(router).await
}

/// Calls `agent.Tools/Charge` as agent run `run_id`.
pub async fn call_charge(
    addr: SocketAddr,
    run_id: &str,
    amount_cents: u64,
) -> Result<ChargeReply, Status> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .map_err(|e| Status::invalid_argument(e.to_string()))?
        .connect()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let mut request = Request::new(ChargeRequest { amount_cents });
    let run = run_id
        .parse()
        .map_err(|_| Status::invalid_argument("run id is not valid metadata"))?;
    request.metadata_mut().insert("x-agent-run-id", run);
    let reply = grpc
        .unary(
            request,
            http::uri::PathAndQuery::from_static(CHARGE_PATH),
            ProstCodec::default(),
        )
        .await?;
    Ok(reply.into_inner())
}
