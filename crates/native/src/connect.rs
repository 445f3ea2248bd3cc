//! The signaling connection: a WebSocket, over TLS (rustls, the public web roots and any
//! private anchors the user names) for `https://` servers.

use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::options::ws_url;
use crate::{JoinOptions, NetError};

/// The signaling socket.
pub(crate) type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The TLS connector for `wss://` URLs: the public web roots plus the certificates in
/// `ca_file`, if any.
pub(crate) fn tls_connector(
    ca_file: Option<&std::path::Path>,
) -> Result<Option<tokio_tungstenite::Connector>, NetError> {
    use rustls_pki_types::pem::PemObject;
    let Some(path) = ca_file else {
        return Ok(None);
    };
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
        .map_err(|e| NetError::Connect(format!("{}: {e}", path.display())))?;
    let mut added = 0;
    for cert in certs {
        let cert = cert.map_err(|e| NetError::Connect(format!("{}: {e}", path.display())))?;
        roots
            .add(cert)
            .map_err(|e| NetError::Connect(format!("{}: {e}", path.display())))?;
        added += 1;
    }
    if added == 0 {
        return Err(NetError::Connect(format!(
            "{}: no certificate in it",
            path.display()
        )));
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| NetError::Connect(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Some(tokio_tungstenite::Connector::Rustls(
        std::sync::Arc::new(config),
    )))
}

/// Opens the room's signaling socket on the server `opts` names.
pub(crate) async fn open(opts: &JoinOptions) -> Result<Ws, NetError> {
    let url = ws_url(&opts.url, &opts.room);
    let connector = tls_connector(opts.ca_file.as_deref())?;
    // Small socket buffers (tungstenite's defaults are 128 KiB each way); a Welcome with its
    // tree still arrives whole, read in more steps.
    let config = WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(8 * 1024);
    let connecting = tokio_tungstenite::connect_async_tls_with_config(
        url.as_str(),
        Some(config),
        false,
        connector,
    );
    match connecting.await {
        Ok((ws, _)) => Ok(ws),
        Err(e) => Err(NetError::Connect(format!("{url}: {e}"))),
    }
}
