-- The MLflow server's users live in their own database (basic_auth.ini: database_uri).
CREATE DATABASE mlflow_auth OWNER dtkd;
