//! Real TLS handshakes (in memory) between the settings this crate makes:
//! a node enrolled by the CA is accepted both ways, a node of another CA is
//! refused, and a joining node's first contact accepts only the pinned CA.

use std::sync::Arc;

use holdfast_pki::rustls::pki_types::ServerName;
use holdfast_pki::rustls::{ClientConnection, ServerConnection};
use holdfast_pki::{
    client_config, first_contact_config, node_name, server_config, Authority, Identity, PkiFiles,
    SigningRequest,
};

fn enrolled(ca: &Authority, node: &str) -> Identity {
    let (request, key) = SigningRequest::generate(node).unwrap();
    let certificate = ca
        .sign(&request, node, &["198.18.0.1".parse().unwrap()])
        .unwrap();
    Identity::from_pem(ca.certificate_pem(), &certificate, &key).unwrap()
}

/// Runs the handshake to its end: Ok(the node name the server saw) or the
/// first side's error.
fn handshake(
    client: holdfast_pki::rustls::ClientConfig,
    server: holdfast_pki::rustls::ServerConfig,
) -> Result<Option<String>, String> {
    let name = ServerName::try_from("198.18.0.1").unwrap();
    let mut client = ClientConnection::new(Arc::new(client), name).unwrap();
    let mut server = ServerConnection::new(Arc::new(server)).unwrap();
    for _ in 0..20 {
        let mut buffer = Vec::new();
        client.write_tls(&mut buffer).unwrap();
        server
            .read_tls(&mut buffer.as_slice())
            .map_err(|e| e.to_string())?;
        server
            .process_new_packets()
            .map_err(|e| format!("server: {e}"))?;
        let mut buffer = Vec::new();
        server.write_tls(&mut buffer).unwrap();
        client
            .read_tls(&mut buffer.as_slice())
            .map_err(|e| e.to_string())?;
        client
            .process_new_packets()
            .map_err(|e| format!("client: {e}"))?;
        if !client.is_handshaking() && !server.is_handshaking() {
            return Ok(server.peer_certificates().and_then(node_name));
        }
    }
    Err("the handshake did not end in 20 rounds".into())
}

#[test]
fn nodes_of_one_ca_talk_and_others_are_refused() {
    let ca = Authority::generate("lab").unwrap();
    let node1 = enrolled(&ca, "node1");
    let node2 = enrolled(&ca, "node2");
    let server = || server_config(&node1).unwrap();
    let seen = handshake(client_config(&node2.ca, Some(&node2)).unwrap(), server()).unwrap();
    assert_eq!(seen.as_deref(), Some("node2"));
    // No client certificate: the handshake passes, the caller is nobody.
    let seen = handshake(client_config(&node2.ca, None).unwrap(), server()).unwrap();
    assert_eq!(seen, None);

    let foreign_ca = Authority::generate("other").unwrap();
    let foreign = enrolled(&foreign_ca, "intruder");
    let err = handshake(client_config(&node1.ca, Some(&foreign)).unwrap(), server()).unwrap_err();
    assert!(
        err.contains("server") && err.contains("UnknownIssuer"),
        "{err}"
    );
    // And the foreign node does not trust the cluster's node either.
    let err = handshake(
        client_config(&foreign.ca, Some(&foreign)).unwrap(),
        server(),
    )
    .unwrap_err();
    assert!(
        err.contains("client") && err.contains("UnknownIssuer"),
        "{err}"
    );
}

#[test]
fn first_contact_accepts_only_the_pinned_ca() {
    let ca = Authority::generate("lab").unwrap();
    let node1 = enrolled(&ca, "node1");
    let pinned = first_contact_config(&ca.fingerprint()).unwrap();
    handshake(pinned, server_config(&node1).unwrap()).unwrap();
    let other = Authority::generate("other").unwrap();
    let err = handshake(
        first_contact_config(&other.fingerprint()).unwrap(),
        server_config(&node1).unwrap(),
    )
    .unwrap_err();
    assert!(
        err.contains("not the one the enrolment token names"),
        "{err}"
    );
}

#[test]
fn files_are_checked_before_they_are_written_and_the_ca_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let files = PkiFiles::new(dir.path().join("pki"));
    let ca = Authority::generate("lab").unwrap();
    let (request, key) = SigningRequest::generate("node1").unwrap();
    let certificate = ca
        .sign(&request, "node1", &["198.18.0.1".parse().unwrap()])
        .unwrap();
    // Another node's key with this certificate: refused, nothing written.
    let (_, wrong_key) = SigningRequest::generate("node1").unwrap();
    let err = files
        .store(ca.certificate_pem(), None, &certificate, &wrong_key)
        .unwrap_err();
    assert!(err.to_string().contains("not the key of node.pem"), "{err}");
    assert!(!files.exists());
    files
        .store(
            ca.certificate_pem(),
            Some(&ca.key_pem()),
            &certificate,
            &key,
        )
        .unwrap();
    assert_eq!(files.identity().unwrap().node, "node1");
    let reloaded = files.authority().unwrap().expect("the CA's key is here");
    assert_eq!(reloaded.fingerprint(), ca.fingerprint());
    // The reloaded CA signs certificates the original CA's holders accept.
    let node2 = enrolled(&reloaded, "node2");
    let node1 = files.identity().unwrap();
    handshake(
        client_config(&node2.ca, Some(&node2)).unwrap(),
        server_config(&node1).unwrap(),
    )
    .unwrap();
}
