//! SeaORM entities for the two tables callers see. Times are milliseconds
//! since the Unix epoch.

pub mod campaign {
    use sea_orm::entity::prelude::*;

    /// A row of `campaigns`. `processed` and `queued` are not stored: they
    /// follow from `sent`, `failed`, `cancelled` and `total`.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "campaigns")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub tenant: String,
        pub name: String,
        pub body: String,
        pub sender: String,
        pub state: String,
        pub total: i64,
        pub sent: i64,
        pub failed: i64,
        pub cancelled: i64,
        pub scheduled_at: Option<i64>,
        pub created_at: i64,
        pub updated_at: i64,
        pub started_at: Option<i64>,
        pub completed_at: Option<i64>,
        pub request_id: Option<String>,
        pub request_hash: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod message {
    use sea_orm::entity::prelude::*;

    /// A row of `messages`, which is also the dispatch queue.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "messages")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub campaign_id: Option<String>,
        pub tenant: String,
        pub to_number: String,
        pub sender: String,
        pub body: String,
        pub state: String,
        pub attempts: i32,
        pub next_attempt_at: i64,
        pub lease_owner: Option<String>,
        pub lease_expires_at: Option<i64>,
        pub last_error_code: Option<String>,
        pub last_error_message: Option<String>,
        pub provider: Option<String>,
        pub provider_message_id: Option<String>,
        pub created_at: i64,
        pub updated_at: i64,
        pub sent_at: Option<i64>,
        pub request_id: Option<String>,
        pub request_hash: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
