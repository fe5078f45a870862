//! Settings as PostgreSQL shows them.

#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn url_is_superuser_only() {
        let flags = Spi::get_one::<String>(
            "SELECT array_to_string(ARRAY[context], ',') FROM pg_settings WHERE name = 'pg_redis.url'",
        );
        assert_eq!(flags, Ok(Some("superuser".to_string())));
    }
}
