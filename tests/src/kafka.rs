//! A real Kafka-protocol broker for tests: `tansu`, a broker written in Rust,
//! installed from crates.io by `tests/scripts/setup.d/20-tansu.sh` and run
//! here as a child process on 127.0.0.1.
//!
//! Clients reach it through a [`Front`] on the port it advertises, which
//! forwards each connection to tansu's own port (terminating TLS first for a
//! TLS broker) and can cut the broker off for an outage while it keeps its
//! data ([`KafkaBroker::cut_off`], [`KafkaBroker::restore`]).
//!
//! Topics live in a SQLite file in the broker's work folder (tansu's `libsql`
//! engine), so a broker that is killed and started again has its records and
//! consumer-group offsets back. tansu's `memory://` engine is not used: it
//! answers ListOffsets(latest) with the newest batch's *first* offset + 1, so
//! a high watermark read after a multi-record batch is short of the end.

use std::{
    fs::File,
    net::{Ipv4Addr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::{
    front::Front,
    tls::{TestCa, TlsError},
};
use rdkafka::{
    ClientConfig, Offset, TopicPartitionList,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    consumer::{BaseConsumer, Consumer},
    producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer},
};

/// How long the broker may take to accept connections and answer metadata.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Timeout of one broker request made by the harness.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What went wrong while running the test broker.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error(
        "tansu not found at {0}: run tests/scripts/setup.sh (or set SLUICE_TANSU to the binary)"
    )]
    NotInstalled(PathBuf),
    #[error("{action}: {source}")]
    Io {
        action: String,
        source: std::io::Error,
    },
    #[error("broker on port {port} not ready after {waited:?}; its log:\n{log}")]
    NotReady {
        port: u16,
        waited: Duration,
        log: String,
    },
    #[error("broker exited early ({status}); its log:\n{log}")]
    Exited { status: String, log: String },
    #[error("kafka request failed: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("creating topic {topic}: {message}")]
    CreateTopic { topic: String, message: String },
    #[error("creating SASL user {user}: {message}")]
    CreateUser { user: String, message: String },
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// A SCRAM-SHA-512 login.
#[derive(Clone, Debug)]
pub struct ScramLogin {
    pub username: String,
    pub password: String,
}

/// The CA of a broker reached over TLS: tansu 0.6 accepts `--cert`/`--key`
/// but never wraps its connections, so its [`Front`] terminates TLS.
struct BrokerTls {
    ca_pem: String,
    ca_file: PathBuf,
}

/// A running tansu broker behind a [`Front`]; killed when dropped.
pub struct KafkaBroker {
    /// Clients connect to the front, which the broker advertises and which
    /// forwards to tansu (terminating TLS first for a TLS broker); cutting
    /// it off is an outage as clients see it ([`KafkaBroker::cut_off`]).
    front: Front,
    /// The port tansu itself listens on.
    listen_port: u16,
    workdir: tempfile::TempDir,
    child: Option<Child>,
    /// Set when the broker requires SASL: the harness's own clients log in so.
    login: Option<ScramLogin>,
    tls: Option<BrokerTls>,
}

impl KafkaBroker {
    /// Starts a broker on a free port and waits until it answers.
    pub fn start() -> Result<Self, BrokerError> {
        let mut broker = Self::unstarted(None)?;
        broker.spawn()?;
        Ok(broker)
    }

    /// Starts a broker reached over TLS only, with a certificate for
    /// 127.0.0.1 signed by a CA made for this broker ([`KafkaBroker::ca_pem`]);
    /// the harness's own clients trust that CA.
    pub fn start_with_tls() -> Result<Self, BrokerError> {
        let ca = TestCa::new()?;
        let mut broker = Self::unstarted(Some(&ca))?;
        let ca_file = broker.workdir.path().join("ca.crt");
        std::fs::write(&ca_file, ca.ca_pem()).map_err(|source| BrokerError::Io {
            action: "writing the CA certificate".into(),
            source,
        })?;
        broker.tls = Some(BrokerTls {
            ca_pem: ca.ca_pem().to_owned(),
            ca_file,
        });
        broker.spawn()?;
        Ok(broker)
    }

    /// The work folder, tansu's port and the front before it (a TLS front
    /// when `ca` is given); the broker itself is not started yet.
    fn unstarted(ca: Option<&TestCa>) -> Result<Self, BrokerError> {
        let workdir = tempfile::tempdir().map_err(|source| BrokerError::Io {
            action: "creating the broker's work folder".into(),
            source,
        })?;
        let listen_port = crate::net::free_port();
        let front = match ca {
            Some(ca) => Front::tls(ca.acceptor()?, listen_port),
            None => Front::plain(listen_port),
        }
        .map_err(|source| BrokerError::Io {
            action: "starting the broker's front".into(),
            source,
        })?;
        Ok(Self {
            front,
            listen_port,
            workdir,
            child: None,
            login: None,
            tls: None,
        })
    }

    /// The CA certificate (PEM) of a broker started with
    /// [`KafkaBroker::start_with_tls`].
    pub fn ca_pem(&self) -> Option<&str> {
        self.tls.as_ref().map(|tls| tls.ca_pem.as_str())
    }

    /// Starts a broker that requires SASL SCRAM-SHA-512 from every client and
    /// knows `login`, which the harness's own clients then use. tansu stores
    /// SCRAM credentials in its SQLite file, so the user is created on an open
    /// broker that then restarts with `--authentication`.
    pub fn start_with_scram(login: ScramLogin) -> Result<Self, BrokerError> {
        let mut broker = Self::start()?;
        let output = Command::new(tansu_binary()?)
            .args(["user", "create", "--mechanism", "scram512", "--broker"])
            .arg(format!("tcp://127.0.0.1:{}", broker.listen_port))
            .args([&login.username, &login.password])
            .output()
            .map_err(|source| BrokerError::Io {
                action: "running tansu user create".into(),
                source,
            })?;
        if !output.status.success() {
            return Err(BrokerError::CreateUser {
                user: login.username,
                message: String::from_utf8_lossy(&output.stderr).into_owned(),
            });
        }
        broker.kill();
        broker.login = Some(login);
        broker.spawn()?;
        Ok(broker)
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn bootstrap_servers(&self) -> String {
        format!("127.0.0.1:{}", self.front.port())
    }

    /// A broker outage as clients see it: every open connection is closed
    /// and new ones are refused until [`KafkaBroker::restore`], while the
    /// broker itself keeps running with its records and group offsets.
    /// Outages can be repeated; unlike [`KafkaBroker::kill`] they depend on
    /// nothing the broker keeps across a restart of its own.
    pub fn cut_off(&self) {
        self.front.cut_off();
    }

    /// Ends an outage begun by [`KafkaBroker::cut_off`] and waits until the
    /// broker answers through its port again.
    pub fn restore(&mut self) -> Result<(), BrokerError> {
        self.front.restore().map_err(|source| BrokerError::Io {
            action: "listening on the broker's port again".into(),
            source,
        })?;
        self.wait_ready()
    }

    /// Kills the broker (SIGKILL) and starts it again on the same port with
    /// the same storage file.
    pub fn restart(&mut self) -> Result<(), BrokerError> {
        self.kill();
        self.start_again()
    }

    /// Kills the broker (SIGKILL): clients see their connections closed and
    /// new ones refused until [`KafkaBroker::start_again`].
    pub fn kill(&mut self) {
        self.front.cut_off();
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a killed broker again on the same port with the same storage
    /// file, and waits until it answers.
    pub fn start_again(&mut self) -> Result<(), BrokerError> {
        if self.child.is_some() {
            return Ok(());
        }
        self.spawn()
    }

    /// Creates a topic and waits until its metadata shows every partition.
    pub fn create_topic(&self, topic: &str, partitions: i32) -> Result<(), BrokerError> {
        let admin: AdminClient<DefaultClientContext> = self.client_config().create()?;
        let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
        let options = AdminOptions::new().operation_timeout(Some(REQUEST_TIMEOUT));
        let results = futures::executor::block_on(admin.create_topics([&new_topic], &options))?;
        for result in results {
            if let Err((name, code)) = result {
                return Err(BrokerError::CreateTopic {
                    topic: name,
                    message: code.to_string(),
                });
            }
        }
        let deadline = Instant::now() + READY_TIMEOUT;
        while self.partition_count(topic)? < partitions as usize {
            if Instant::now() > deadline {
                return Err(BrokerError::CreateTopic {
                    topic: topic.into(),
                    message: "partitions never appeared in metadata".into(),
                });
            }
            thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Number of partitions of `topic` (0 when it does not exist).
    pub fn partition_count(&self, topic: &str) -> Result<usize, BrokerError> {
        let consumer: BaseConsumer = self.client_config().create()?;
        let metadata = consumer.fetch_metadata(Some(topic), REQUEST_TIMEOUT)?;
        Ok(metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map_or(0, |t| t.partitions().len()))
    }

    /// A producer configured for this broker (`acks=all`, librdkafka's
    /// default batching); tests check the end offsets afterwards.
    pub fn producer(&self) -> Result<TestProducer, BrokerError> {
        let producer = self
            .client_config()
            .set("acks", "all")
            .set("linger.ms", "5")
            .create()?;
        Ok(TestProducer { producer })
    }

    /// Each partition's high watermark (the offset the next record gets).
    pub fn end_offsets(&self, topic: &str) -> Result<Vec<i64>, BrokerError> {
        let consumer: BaseConsumer = self.client_config().create()?;
        (0..self.partition_count(topic)? as i32)
            .map(|partition| {
                consumer
                    .fetch_watermarks(topic, partition, REQUEST_TIMEOUT)
                    .map(|(_, high)| high)
                    .map_err(Into::into)
            })
            .collect()
    }

    /// Offsets committed by `group` for each partition of `topic` (`None` when nothing is committed).
    pub fn committed_offsets(
        &self,
        group: &str,
        topic: &str,
    ) -> Result<Vec<Option<i64>>, BrokerError> {
        let consumer: BaseConsumer = self.client_config().set("group.id", group).create()?;
        let mut partitions = TopicPartitionList::new();
        for partition in 0..self.partition_count(topic)? as i32 {
            partitions.add_partition(topic, partition);
        }
        let committed = consumer.committed_offsets(partitions, REQUEST_TIMEOUT)?;
        Ok(committed
            .elements()
            .iter()
            .map(|element| match element.offset() {
                Offset::Offset(offset) => Some(offset),
                _ => None,
            })
            .collect())
    }

    /// Client settings that reach this broker; tests add their own.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", self.bootstrap_servers())
            .set("socket.timeout.ms", "10000")
            .set("log_level", "3");
        let protocol = match (&self.tls, &self.login) {
            (None, None) => "plaintext",
            (Some(_), None) => "ssl",
            (None, Some(_)) => "sasl_plaintext",
            (Some(_), Some(_)) => "sasl_ssl",
        };
        config.set("security.protocol", protocol);
        if let Some(tls) = &self.tls {
            config.set("ssl.ca.location", tls.ca_file.display().to_string());
        }
        if let Some(login) = &self.login {
            config
                .set("sasl.mechanisms", "SCRAM-SHA-512")
                .set("sasl.username", &login.username)
                .set("sasl.password", &login.password);
        }
        config
    }

    /// The broker's combined stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.workdir.path().join("tansu.log")
    }

    fn spawn(&mut self) -> Result<(), BrokerError> {
        let binary = tansu_binary()?;
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|source| BrokerError::Io {
                action: "opening the broker log".into(),
                source,
            })?;
        let log_err = log.try_clone().map_err(|source| BrokerError::Io {
            action: "opening the broker log".into(),
            source,
        })?;
        let listener = format!("tcp://127.0.0.1:{}", self.listen_port);
        let advertised = format!("tcp://127.0.0.1:{}", self.front.port());
        let mut command = Command::new(&binary);
        command
            .args([
                "broker",
                "--listener-url",
                &listener,
                "--advertised-listener-url",
                &advertised,
            ])
            // Relative to the work folder (the broker's current directory).
            .args(["--storage-engine", "sqlite://tansu.db", "--silent"])
            .args(self.login.is_some().then_some("--authentication"))
            .env("RUST_LOG", "warn")
            .current_dir(self.workdir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        let child = command.spawn().map_err(|source| BrokerError::Io {
            action: format!("starting {}", binary.display()),
            source,
        })?;
        self.child = Some(child);
        self.front.restore().map_err(|source| BrokerError::Io {
            action: "listening on the broker's port again".into(),
            source,
        })?;
        self.wait_ready()
    }

    /// Polls until the broker answers a metadata request, failing fast if it exits.
    fn wait_ready(&mut self) -> Result<(), BrokerError> {
        let started = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(BrokerError::Exited {
                    status: status.to_string(),
                    log: self.log(),
                });
            }
            if self.answers_metadata() {
                return Ok(());
            }
            if started.elapsed() > READY_TIMEOUT {
                return Err(BrokerError::NotReady {
                    port: self.front.port(),
                    waited: started.elapsed(),
                    log: self.log(),
                });
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn answers_metadata(&self) -> bool {
        if TcpStream::connect((Ipv4Addr::LOCALHOST, self.listen_port)).is_err() {
            return false;
        }
        let Ok(consumer) = self.client_config().create::<BaseConsumer>() else {
            return false;
        };
        consumer
            .fetch_metadata(None, Duration::from_secs(2))
            .is_ok_and(|metadata| !metadata.brokers().is_empty())
    }
}

impl Drop for KafkaBroker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A synchronous producer for test data.
pub struct TestProducer {
    producer: ThreadedProducer<DefaultProducerContext>,
}

impl TestProducer {
    /// Queues one record for `partition` of `topic`.
    pub fn send(
        &self,
        topic: &str,
        partition: i32,
        key: Option<&[u8]>,
        payload: &[u8],
    ) -> Result<(), BrokerError> {
        let mut record = BaseRecord::<[u8], [u8]>::to(topic)
            .partition(partition)
            .payload(payload);
        if let Some(key) = key {
            record = record.key(key);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                // The local queue is full: let the broker catch up, then retry.
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    returned,
                )) => {
                    record = returned;
                    self.producer.poll(Duration::from_millis(50));
                }
                Err((error, _)) => return Err(error.into()),
            }
        }
    }

    /// Waits until every queued record is acknowledged by the broker.
    pub fn flush(&self) -> Result<(), BrokerError> {
        self.producer.flush(Duration::from_secs(120))?;
        Ok(())
    }
}

/// The tansu binary: `$SLUICE_TANSU`, else `$SLUICE_CACHE/bin/tansu` (default
/// cache `~/.cache/sluice`, as in tests/scripts/env.sh).
pub fn tansu_binary() -> Result<PathBuf, BrokerError> {
    let path = match std::env::var_os("SLUICE_TANSU") {
        Some(path) => PathBuf::from(path),
        None => cache_dir().join("bin").join("tansu"),
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(BrokerError::NotInstalled(path))
    }
}

fn cache_dir() -> PathBuf {
    match std::env::var_os("SLUICE_CACHE") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(&std::env::var_os("HOME").unwrap_or_default()).join(".cache/sluice"),
    }
}
