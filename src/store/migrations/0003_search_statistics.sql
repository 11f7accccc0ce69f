-- The index tables mix every parameter of every type: the planner must know how
-- (res_type, param) and the values go together to estimate a condition's rows
-- (e.g. that status=finished is most Encounters), or it picks poor join orders.
CREATE STATISTICS search_string_stats (mcv, dependencies) ON res_type, param, normalized FROM search_string;
CREATE STATISTICS search_token_stats (mcv, dependencies) ON res_type, param, code FROM search_token;
CREATE STATISTICS search_reference_stats (mcv, dependencies) ON res_type, param, target_type FROM search_reference;
CREATE STATISTICS search_date_stats (mcv, dependencies) ON res_type, param FROM search_date;
CREATE STATISTICS search_number_stats (mcv, dependencies) ON res_type, param FROM search_number;
CREATE STATISTICS search_quantity_stats (mcv, dependencies) ON res_type, param, code FROM search_quantity;
CREATE STATISTICS search_uri_stats (mcv, dependencies) ON res_type, param FROM search_uri;
