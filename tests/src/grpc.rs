//! A real gRPC server and client for the gRPC tests: tonic's server codec (`tonic::server::Grpc`)
//! behind hyper's HTTP/2 server (h2c), and tonic's generic client over a tonic `Channel`.
//! The messages are derived by hand with prost, so no `protoc` is needed. The service
//! `test.Echo` has a unary call (`Say`), a client-streaming one (`Join`) and a
//! server-streaming one (`Count`); every answer carries the trailer `x-served-by` with the
//! server's name, and the server records what it received.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::uri::PathAndQuery;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;

/// The one message of `test.Echo`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Msg {
    #[prost(string, tag = "1")]
    pub text: String,
    /// `Count`: how many messages to stream back.
    #[prost(uint32, tag = "2")]
    pub n: u32,
}

impl Msg {
    pub fn text(t: &str) -> Msg {
        Msg {
            text: t.to_string(),
            n: 0,
        }
    }
}

pub const SAY: &str = "/test.Echo/Say";
pub const JOIN: &str = "/test.Echo/Join";
pub const COUNT: &str = "/test.Echo/Count";

/// One call as the server saw it.
#[derive(Debug, Clone)]
pub struct Call {
    pub path: String,
    pub version: http::Version,
    pub grpc_timeout: Option<String>,
    /// The texts of the messages received.
    pub texts: Vec<String>,
}

/// How a `GrpcServer` answers.
#[derive(Clone, Default)]
pub struct GrpcBehaviour {
    /// Every call fails with this code (and the message `"<name> says no"`).
    pub fail: Option<Code>,
    /// Every call waits this long before answering.
    pub delay: Duration,
}

/// A gRPC server on 127.0.0.1:0 speaking h2c; ends with the test's runtime.
pub struct GrpcServer {
    pub addr: SocketAddr,
    calls: Arc<Mutex<Vec<Call>>>,
}

impl GrpcServer {
    pub async fn start(name: &str, behaviour: GrpcBehaviour) -> GrpcServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let calls = Arc::new(Mutex::new(Vec::new()));
        let state = Arc::new(ServerState {
            name: name.to_string(),
            behaviour,
            calls: calls.clone(),
        });
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let _ = stream.set_nodelay(true);
                let state = state.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| handle(state.clone(), req));
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .timer(TokioTimer::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        GrpcServer { addr, calls }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The calls received so far.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("calls lock").clone()
    }
}

struct ServerState {
    name: String,
    behaviour: GrpcBehaviour,
    calls: Arc<Mutex<Vec<Call>>>,
}

impl ServerState {
    fn record(&self, path: &str, head: &RequestHead, texts: Vec<String>) {
        self.calls.lock().expect("calls lock").push(Call {
            path: path.to_string(),
            version: head.version,
            grpc_timeout: head.grpc_timeout.clone(),
            texts,
        });
    }

    /// The delay, then the failure if one is configured.
    async fn answer(&self) -> Result<(), Status> {
        if !self.behaviour.delay.is_zero() {
            tokio::time::sleep(self.behaviour.delay).await;
        }
        match self.behaviour.fail {
            Some(code) => Err(Status::new(code, format!("{} says no", self.name))),
            None => Ok(()),
        }
    }
}

#[derive(Clone)]
struct RequestHead {
    version: http::Version,
    grpc_timeout: Option<String>,
}

type GrpcBody = http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, Status>;

async fn handle(
    state: Arc<ServerState>,
    req: http::Request<Incoming>,
) -> Result<http::Response<GrpcBody>, Infallible> {
    let path = req.uri().path().to_string();
    let head = RequestHead {
        version: req.version(),
        grpc_timeout: req
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    };
    let mut grpc = tonic::server::Grpc::new(ProstCodec::<Msg, Msg>::default());
    let st = state.clone();
    let resp = match path.as_str() {
        SAY => {
            let svc = tower::service_fn(move |r: Request<Msg>| {
                let (st, head) = (st.clone(), head.clone());
                async move {
                    let m = r.into_inner();
                    st.record(SAY, &head, vec![m.text.clone()]);
                    st.answer().await?;
                    Ok::<_, Status>(Response::new(Msg::text(&m.text)))
                }
            });
            grpc.unary(svc, req).await
        }
        JOIN => {
            let svc = tower::service_fn(move |r: Request<Streaming<Msg>>| {
                let (st, head) = (st.clone(), head.clone());
                async move {
                    let mut stream = r.into_inner();
                    let mut texts = Vec::new();
                    while let Some(m) = stream.next().await {
                        texts.push(m?.text);
                    }
                    st.record(JOIN, &head, texts.clone());
                    st.answer().await?;
                    Ok::<_, Status>(Response::new(Msg::text(&texts.join(""))))
                }
            });
            grpc.client_streaming(svc, req).await
        }
        COUNT => {
            let svc = tower::service_fn(move |r: Request<Msg>| {
                let (st, head) = (st.clone(), head.clone());
                async move {
                    let m = r.into_inner();
                    st.record(COUNT, &head, vec![m.text.clone()]);
                    st.answer().await?;
                    let items: Vec<Result<Msg, Status>> = (0..m.n)
                        .map(|i| Ok(Msg::text(&format!("{}{i}", m.text))))
                        .collect();
                    Ok::<_, Status>(Response::new(tokio_stream::iter(items)))
                }
            });
            grpc.server_streaming(svc, req).await
        }
        _ => Status::unimplemented(path.clone()).into_http(),
    };
    // Every answer carries the server's name as a custom trailer.
    let name = http::HeaderValue::from_str(&state.name).expect("a header-safe name");
    let resp = resp.map(|body| {
        body.map_frame(move |mut f| {
            if let Some(t) = f.trailers_mut() {
                t.insert("x-served-by", name.clone());
            }
            f
        })
        .boxed_unsync()
    });
    Ok(resp)
}

/// A gRPC client (tonic's generic client) over an h2c connection to `url`.
pub struct GrpcClient {
    inner: tonic::client::Grpc<Deadline>,
    deadline: Arc<Mutex<Option<http::HeaderValue>>>,
}

/// The HTTP/2 connection under tonic's client: hyper's (h2c, prior knowledge).
type H2 = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    tonic::body::Body,
>;

/// The connection, adding a `grpc-timeout` header when one is set. tonic's own `Channel`
/// would also start a timer of its own for it; without one, the deadline a test sees is
/// the one the proxy (or the server) enforces.
#[derive(Clone)]
pub struct Deadline {
    inner: H2,
    header: Arc<Mutex<Option<http::HeaderValue>>>,
}

impl tower::Service<http::Request<tonic::body::Body>> for Deadline {
    type Response = <H2 as tower::Service<http::Request<tonic::body::Body>>>::Response;
    type Error = <H2 as tower::Service<http::Request<tonic::body::Body>>>::Error;
    type Future = <H2 as tower::Service<http::Request<tonic::body::Body>>>::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<tonic::body::Body>) -> Self::Future {
        if let Some(v) = self.header.lock().expect("deadline lock").clone() {
            req.headers_mut().insert("grpc-timeout", v);
        }
        self.inner.call(req)
    }
}

impl GrpcClient {
    pub async fn connect(url: &str) -> GrpcClient {
        let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
        http.set_nodelay(true);
        let h2 = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .http2_only(true)
            .timer(TokioTimer::new())
            .build(http);
        let deadline = Arc::new(Mutex::new(None));
        let origin = url.parse().expect("a valid url");
        GrpcClient {
            inner: tonic::client::Grpc::with_origin(
                Deadline {
                    inner: h2,
                    header: deadline.clone(),
                },
                origin,
            ),
            deadline,
        }
    }

    async fn ready(&mut self) {
        self.inner.ready().await.expect("channel ready");
    }

    /// `Say`; `timeout` is sent as `grpc-timeout` (in milliseconds), with no timer of the
    /// client's own.
    pub async fn say(
        &mut self,
        text: &str,
        timeout: Option<Duration>,
    ) -> Result<Response<Msg>, Status> {
        self.ready().await;
        *self.deadline.lock().expect("deadline lock") = timeout
            .map(|t| http::HeaderValue::from_str(&format!("{}m", t.as_millis())).expect("digits"));
        let r = self
            .inner
            .unary(
                Request::new(Msg::text(text)),
                PathAndQuery::from_static(SAY),
                ProstCodec::default(),
            )
            .await;
        *self.deadline.lock().expect("deadline lock") = None;
        r
    }

    /// `Join`: the texts streamed up, one answer back.
    pub async fn join(&mut self, texts: &[&str]) -> Result<Response<Msg>, Status> {
        self.ready().await;
        let msgs: Vec<Msg> = texts.iter().map(|t| Msg::text(t)).collect();
        self.inner
            .client_streaming(
                Request::new(tokio_stream::iter(msgs)),
                PathAndQuery::from_static(JOIN),
                ProstCodec::default(),
            )
            .await
    }

    /// `Count`: `n` messages streamed back; returns their texts and the trailers.
    pub async fn count(
        &mut self,
        text: &str,
        n: u32,
    ) -> Result<(Vec<String>, Option<tonic::metadata::MetadataMap>), Status> {
        self.ready().await;
        let req = Request::new(Msg {
            text: text.to_string(),
            n,
        });
        let mut stream: Streaming<Msg> = self
            .inner
            .server_streaming(req, PathAndQuery::from_static(COUNT), ProstCodec::default())
            .await?
            .into_inner();
        let mut texts = Vec::new();
        while let Some(m) = stream.message().await? {
            texts.push(m.text);
        }
        let trailers = stream.trailers().await?;
        Ok((texts, trailers))
    }
}
