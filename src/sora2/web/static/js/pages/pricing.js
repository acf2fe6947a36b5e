// Pricing: the table is the server's (from the model catalog); only the header follows the session.
import { startPage } from "../common.js";

startPage(async () => {});
