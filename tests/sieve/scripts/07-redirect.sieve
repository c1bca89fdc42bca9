if address :domain :is "from" "example.com" { redirect "forward@elsewhere.example"; }
