//! The benchmark's own slice of the shared services: a fresh database and
//! queue prefix per run (so a run never reads another's data), the users and
//! applications the scenarios read, and tokens signed with the run's secret.

use finapp_broker::topology::declare_queues;
use finapp_shared::{
    auth::{Passwords, Role, TokenKeys},
    config::Config,
    events::{DEAD_LETTER_QUEUE, EventType},
    finance::NewApplication,
    store::{Store, UserDoc, collections},
};
use lapin::{Connection, ConnectionProperties, options::QueueDeleteOptions};
use secrecy::{ExposeSecret as _, SecretString};

use crate::{
    error::{Error, Result},
    settings::Settings,
};

/// `BENCH_MONGODB_URI`, else the FerretDB `scripts/services.sh` starts.
pub fn mongodb_uri() -> String {
    std::env::var("BENCH_MONGODB_URI")
        .ok()
        .filter(|uri| !uri.is_empty())
        .unwrap_or_else(|| "mongodb://127.0.0.1:27017".to_owned())
}
pub const RABBITMQ_URI: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// A database and a queue prefix of their own.
#[derive(Clone, Debug)]
pub struct Space {
    pub database: String,
    pub queue_prefix: String,
}

impl Space {
    /// A fresh space named after `run` and `purpose`.
    pub fn new(run: &str, purpose: &str) -> Self {
        Self {
            database: format!("bench_{run}_{purpose}"),
            queue_prefix: format!("bench.{run}.{purpose}."),
        }
    }

    /// Drops the database and deletes the queues.
    pub async fn remove(&self) -> Result<()> {
        let client = mongodb::Client::with_uri_str(mongodb_uri()).await?;
        client.database(&self.database).drop().await?;
        let connection = Connection::connect(RABBITMQ_URI, ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        let queues = EventType::ALL
            .iter()
            .map(|kind| kind.queue())
            .chain([DEAD_LETTER_QUEUE]);
        for queue in queues {
            let name = format!("{}{queue}", self.queue_prefix);
            channel
                .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                .await?;
        }
        connection.close(200, "done".into()).await?;
        Ok(())
    }
}

/// Everything the scenarios share.
pub struct Fixture {
    pub run: String,
    /// Where the readers' applications and the login user live.
    pub space: Space,
    /// Where `POST /apply` writes, so its growing collection never slows the readers.
    pub apply_space: Space,
    /// An empty, indexed space for the cold starts.
    pub cold_space: Space,
    secret: String,
    pub config: Config,
    pub store: Store,
    pub apply_store: Store,
    /// Users with `applications_per_user` applications each, and their tokens.
    pub users: Vec<String>,
    pub tokens: Vec<String>,
    /// Users who submit applications, and their tokens.
    pub writers: Vec<String>,
    pub writer_tokens: Vec<String>,
    /// A user stored with a bcrypt hash at the default cost.
    pub login_user: String,
    pub login_password: String,
}

impl Fixture {
    /// Creates the run's databases, users, applications and financing options.
    pub async fn create(settings: &Settings) -> Result<Self> {
        let run = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
        let space = Space::new(&run, "main");
        let secret = format!("bench-secret-{}", uuid::Uuid::new_v4().simple());
        let apply_space = Space::new(&run, "apply");
        let cold_space = Space::new(&run, "cold");
        let config = config_for(&space, &secret)?;
        let store = prepare(&config).await?;
        let apply_store = prepare(&config_for(&apply_space, &secret)?).await?;
        prepare(&config_for(&cold_space, &secret)?).await?;
        let keys = TokenKeys::new(&config);

        let users: Vec<String> = (0..settings.users)
            .map(|i| format!("bench_user_{i:02}"))
            .collect();
        for user in &users {
            for i in 0..settings.applications_per_user {
                let application = NewApplication {
                    loan_types: vec!["personal".into()],
                    amount: 15_000.0 + i as f64,
                    purpose: "Car purchase".into(),
                };
                store
                    .insert_application(&application, user)
                    .await
                    .map_err(mongo)?;
            }
        }
        let issue = |users: &[String]| -> Vec<String> {
            users
                .iter()
                .map(|user| keys.issue(user, Role::User).expose_secret().to_owned())
                .collect()
        };
        let tokens = issue(&users);
        let writers: Vec<String> = (0..settings.users)
            .map(|i| format!("bench_writer_{i:02}"))
            .collect();
        let writer_tokens = issue(&writers);
        // User routes refuse a token whose user does not exist.
        insert_users(&store, &users).await?;
        insert_users(&apply_store, &writers).await?;

        finapp_admin::seed_financing_options(&store)
            .await
            .map_err(|err| Error::Setup(format!("cannot seed the financing options: {err}")))?;

        let login_user = "bench_login".to_owned();
        let login_password = "bench-password-1234".to_owned();
        let hash = Passwords::new(config.bcrypt_cost)
            .hash(SecretString::from(login_password.clone()))
            .await
            .map_err(|err| Error::Setup(format!("bcrypt: {err}")))?;
        store
            .insert_user(&UserDoc::new(&login_user, &hash, Role::User))
            .await
            .map_err(|err| Error::Setup(format!("cannot store the login user: {err}")))?;

        Ok(Self {
            run,
            space,
            apply_space,
            cold_space,
            secret,
            config,
            store,
            apply_store,
            users,
            tokens,
            writers,
            writer_tokens,
            login_user,
            login_password,
        })
    }

    /// The environment a function process working in `space` gets: the
    /// space and the run's secret, everything else (BCRYPT_COST, RUST_LOG,
    /// pool size) at its default.
    pub fn env_in(&self, space: &Space) -> Vec<(String, String)> {
        vars(space, &self.secret)
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value))
            .collect()
    }

    /// The configuration the functions read from [`Fixture::env_in`].
    pub fn config_in(&self, space: &Space) -> Result<Config> {
        config_for(space, &self.secret)
    }

    /// Every space a run may have created, for the final clean-up.
    pub fn spaces(&self, pipeline_runs: usize) -> Vec<Space> {
        let mut spaces = vec![
            self.space.clone(),
            self.apply_space.clone(),
            self.cold_space.clone(),
        ];
        spaces.extend((0..pipeline_runs).map(|run| pipeline_space(&self.run, run)));
        spaces
    }
}

/// The space of the pipeline's run number `run`.
pub fn pipeline_space(run_id: &str, run: usize) -> Space {
    Space::new(run_id, &format!("events{run}"))
}

/// A space as a deployment finds it: the database with its indexes, the
/// queues declared. Returns the store.
pub async fn prepare(config: &Config) -> Result<Store> {
    let store = Store::connect(config).await.map_err(mongo)?;
    store
        .ensure_indexes()
        .await
        .map_err(|err| Error::Setup(err.to_string()))?;
    let connection = Connection::connect(RABBITMQ_URI, ConnectionProperties::default()).await?;
    declare_queues(&connection, &config.queue_prefix, config.queue_type).await?;
    connection.close(200, "done".into()).await?;
    Ok(store)
}

/// Stores `names` as users (with a password no login matches).
pub async fn insert_users(store: &Store, names: &[String]) -> Result<()> {
    let people: Vec<mongodb::bson::Document> = names
        .iter()
        .map(|name| mongodb::bson::doc! { "username": name, "password": "x" })
        .collect();
    for chunk in people.chunks(1_000) {
        store
            .database()
            .collection::<mongodb::bson::Document>(collections::USERS)
            .insert_many(chunk)
            .await
            .map_err(|err| Error::Setup(format!("cannot store the users: {err}")))?;
    }
    Ok(())
}

fn vars(space: &Space, secret: &str) -> Vec<(&'static str, String)> {
    vec![
        ("MONGODB_URI", mongodb_uri()),
        ("MONGODB_DATABASE", space.database.clone()),
        ("RABBITMQ_URI", RABBITMQ_URI.into()),
        ("RABBITMQ_QUEUE_PREFIX", space.queue_prefix.clone()),
        ("JWT_SECRET_KEY", secret.to_owned()),
        // `/apply` is measured as a write path: a writer posts thousands of
        // applications, far past the default cap on pending ones.
        ("MAX_PENDING_APPLICATIONS", "1000000000".into()),
    ]
}

/// The functions' configuration, except that the harness's own tokens live a
/// day, so a long run never outlives them.
fn config_for(space: &Space, secret: &str) -> Result<Config> {
    let mut vars = vars(space, secret);
    vars.push(("ACCESS_TOKEN_EXPIRE_MINUTES", "1440".into()));
    Config::from_lookup(|name| {
        vars.iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.clone())
    })
    .map_err(|err| Error::Setup(err.to_string()))
}

/// The shared crate's store errors keep the driver error as their source.
pub fn mongo(err: finapp_shared::store::StoreError) -> Error {
    Error::Setup(format!(
        "{err}: {}",
        std::error::Error::source(&err).map_or_else(String::new, ToString::to_string)
    ))
}
