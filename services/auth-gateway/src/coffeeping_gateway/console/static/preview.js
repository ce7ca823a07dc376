// The new-email form's preview: the subject and each message with the merge fields filled in from the
// chosen contact, as the mailer will fill them. Only a preview: the mailer checks the real thing when
// the email is saved, and its reasons show beside the fields.
const MERGE = /\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}/g;
const FIELDS = ["first_name", "name", "company", "role"];

function filled(template, contact, into) {
  into.replaceChildren();
  let at = 0;
  for (const match of template.matchAll(MERGE)) {
    into.append(template.slice(at, match.index));
    const key = match[1].toLowerCase();
    const value = FIELDS.includes(key) ? contact[key] : "";
    if (value) {
      into.append(value);
    } else {
      const missing = document.createElement("mark");
      missing.className = "merge-missing";
      missing.textContent = FIELDS.includes(key) ? `{{${key}}}: the contact has no ${key.replace("_", " ")}`
        : `{{${match[1]}}}: unknown merge field`;
      into.append(missing);
    }
    at = match.index + match[0].length;
  }
  into.append(template.slice(at));
}

function block(title, cls) {
  const heading = document.createElement("h3");
  heading.textContent = title;
  const text = document.createElement("p");
  text.className = cls;
  return [heading, text];
}

export function mergePreview() {
  const form = document.querySelector("form[data-compose]");
  const panel = document.querySelector("[data-preview]");
  if (!form || !panel) return;
  const select = form.querySelector("#contact_id");
  const out = panel.querySelector("[data-preview-out]");
  const caption = panel.querySelector("[data-preview-for]");
  const render = () => {
    const option = select.selectedOptions[0];
    if (!option || !option.value) {
      caption.textContent = "Choose a contact to see the merge fields filled in.";
      out.replaceChildren();
      return;
    }
    const contact = Object.fromEntries(FIELDS.map((key) => [key, option.dataset[key] || ""]));
    caption.textContent = `As ${option.textContent.trim()} will read it:`;
    const parts = [];
    const add = (title, cls, source) => {
      const [heading, text] = block(title, cls);
      filled(source.value, contact, text);
      parts.push(heading, text);
    };
    add("Subject", "subject", form.querySelector("#subject"));
    add("First email", "body", form.querySelector("#body"));
    form.querySelectorAll("textarea[id^=follow_up_body_]").forEach((area, i) => add(`Follow-up ${i + 1}`, "body", area));
    out.replaceChildren(...parts);
  };
  form.addEventListener("input", render);
  form.addEventListener("change", render);
  panel.hidden = false;
  render();
}
