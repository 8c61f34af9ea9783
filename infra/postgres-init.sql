-- Databases of the production profile on one PostgreSQL server (owned by POSTGRES_USER).
CREATE DATABASE personas_feast;
CREATE DATABASE personas_mlflow;
CREATE DATABASE personas_prefect;
